"""Classification metrics: accuracy, per-class precision/recall/F1, macro F1, confusion matrix.

    precision_c = TP_c / (TP_c + FP_c)    recall_c = TP_c / (TP_c + FN_c)
    F1_c = 2 precision_c recall_c / (precision_c + recall_c)   (0 when both are 0)
    macro F1 = mean over classes of F1_c                         (every class counts the same)

as scikit-learn's `f1_score(average="macro", zero_division=0)`. `predict` runs a model over the
batches of one split (`iter_eval_batches`) and returns the argmax labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmforge.device import autocast


@dataclass
class ClassificationMetrics:
    accuracy: float
    macro_f1: float
    f1: list[float]
    """Per class, in label order."""
    confusion: list[list[int]]
    """confusion[true][predicted] counts."""
    count: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1}

    def summary(self) -> str:
        return f"accuracy {self.accuracy:.4f} (macro F1 {self.macro_f1:.4f})"


def classification_metrics(
    predictions: torch.Tensor, labels: torch.Tensor, num_labels: int
) -> ClassificationMetrics:
    """Metrics of predicted label indices against true ones, both (N,)."""
    predictions, labels = predictions.long().cpu(), labels.long().cpu()
    pairs = labels * num_labels + predictions  # (N,): one cell of the confusion matrix each
    confusion = torch.bincount(pairs, minlength=num_labels**2).view(num_labels, num_labels)
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()  # (L,) each
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)
    n = int(labels.numel())
    return ClassificationMetrics(
        accuracy=float(tp.sum() / max(n, 1)),
        macro_f1=float(f1.mean()),
        f1=f1.tolist(),
        confusion=confusion.tolist(),
        count=n,
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    data,
    split: str,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted label indices, true labels), each (N,), over every row of `split` in order."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for batch in data.iter_eval_batches(split, batch_size):
        *inputs, y = (t.to(device) for t in batch)
        with autocast(device, dtype):
            logits = model(*inputs)  # (B, num_labels)
        predictions.append(logits.argmax(-1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(predictions), torch.cat(labels)
