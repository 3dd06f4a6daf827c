"""Tagging metrics: entity-level precision / recall / F1 by seqeval, and per-word accuracy.

An entity is a maximal span of words B-X I-X ... I-X (CoNLL-2003; Tjong Kim Sang & De Meulder,
2003); a predicted entity counts as correct only when its type and both boundaries equal a gold
entity's. Over all entities of a split (micro average):

    precision = correct / predicted entities    recall = correct / gold entities
    F1 = 2 precision recall / (precision + recall)          (0 when both are 0)

computed by `seqeval` (Nakayama, 2018) in its default mode, which reads spans as the CoNLL
`conlleval` script does (an I-X after O or after another type starts a new entity). Per-type
scores are seqeval's `classification_report`. Token accuracy is the share of words whose predicted
tag equals the gold one. Only the words whose first sub-word fits the model's input are scored
(data/tagging.py); the count of the others is kept beside the scores.

`predict_tags` runs a model (a `TokenClassifier` on token batches, or the head alone on cached
word features) over one split and returns the predicted tag indices of each sentence's words.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.data.tagging import IGNORE_INDEX
from lmforge.device import autocast


@dataclass
class TaggingMetrics:
    precision: float
    recall: float
    f1: float
    """Entity-level micro F1."""
    accuracy: float
    """Token (word) accuracy."""
    per_type: dict[str, dict[str, float]]
    """Entity type -> precision, recall, f1, support (gold entities)."""
    sentences: int
    words: int
    """Words scored."""
    truncated_words: int = 0
    """Words not scored: their first sub-word fell beyond the model's input length."""
    predicted: list[list[str]] = field(default_factory=list, repr=False)
    """Predicted tags of each sentence's scored words, in split order (for examples)."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}entity_f1": self.f1,
            f"{prefix}entity_precision": self.precision,
            f"{prefix}entity_recall": self.recall,
            f"{prefix}token_accuracy": self.accuracy,
        }

    def summary(self) -> str:
        return (
            f"entity F1 {self.f1:.4f} (precision {self.precision:.4f}, recall "
            f"{self.recall:.4f}), token accuracy {self.accuracy:.4f}"
        )


def tagging_metrics(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], truncated_words: int = 0
) -> TaggingMetrics:
    """Scores of predicted tag sequences against gold ones (the same number of words each)."""
    from seqeval.metrics import accuracy_score, classification_report  # imports scikit-learn

    gold, predicted = [list(g) for g in gold], [list(p) for p in predicted]
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted tags must have the same shape")
    with warnings.catch_warnings():  # no entity anywhere: numpy warns on an empty macro mean
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    per_type = {
        name: {
            "precision": float(s["precision"]),
            "recall": float(s["recall"]),
            "f1": float(s["f1-score"]),
            "support": int(s["support"]),
        }
        for name, s in report.items()
        if not name.endswith(" avg")
    }
    words = sum(len(g) for g in gold)
    return TaggingMetrics(
        precision=float(micro["precision"]),
        recall=float(micro["recall"]),
        f1=float(micro["f1-score"]),
        accuracy=float(accuracy_score(gold, predicted)) if words else 0.0,
        per_type=per_type,
        sentences=len(gold),
        words=words,
        truncated_words=truncated_words,
        predicted=predicted,
    )


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity of one tag sequence, as seqeval reads them."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, first, last) for kind, first, last in get_entities(list(tags))]


@torch.no_grad()
def predict_tags(
    model: nn.Module,
    data,
    split: str,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[list[int]]:
    """Predicted tag indices of the scored words of each sentence of `split`, in order.

    The batches' last tensor holds the labels: -100 where no word's first sub-word is, so the
    positions it leaves, in row-major order, are the scored words of the batch's sentences."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    flat = []
    for batch in data.iter_eval_batches(split, batch_size):
        *inputs, labels = (t.to(device) for t in batch)
        with autocast(device, dtype):
            logits = model(*inputs)  # (B, T, num_tags) tokens, or (N, num_tags) word features
        flat.append(logits[labels != IGNORE_INDEX].argmax(-1).cpu())  # (words,)
    model.train(was_training)
    predictions = torch.cat(flat).tolist() if flat else []
    out, start = [], 0
    for kept in data.kept[split]:
        out.append(predictions[start : start + kept])
        start += kept
    return out
