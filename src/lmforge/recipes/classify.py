"""`lmforge classify --model RUN --text ...`: label texts with a classifier from `lmforge finetune`.

    lmforge classify --model runs/rt-full --text "A triumph." --text "Dull and far too long."

From Python, `load_classifier(RUN)` returns a `TextClassifier`: calling it on a text or a list of
texts gives one `Prediction` (label, probability, every label's probability) per text. Texts are
framed, truncated and padded exactly as in fine-tuning (data/classification.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.classification import FRAMINGS, pad_right, tokenize_texts
from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.models.heads import SequenceClassifier, load_sequence_classifier
from lmforge.tokenizer import Tokenizer


@dataclass
class ClassifyConfig:
    model: str
    """Run directory of `lmforge finetune --task classify`."""
    texts: list[str]
    """Texts to label."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""


@dataclass
class Prediction:
    label: str
    """The most likely label."""
    probability: float
    """Its probability (softmax of the logits)."""
    probabilities: dict[str, float]
    """Every label's probability."""


class TextClassifier:
    """Texts in, labels out: a `SequenceClassifier` with its tokenizer and framing."""

    def __init__(self, model: SequenceClassifier, tokenizer: Tokenizer, max_length: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.framing = FRAMINGS[model.family](tokenizer, model.backbone.config)
        self.max_length = min(max_length, model.max_length)
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Label probabilities (N, num_labels) of `texts`."""
        rows = tokenize_texts(texts, self.tokenizer, self.framing, self.max_length)
        out = []
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_right(rows[start : start + batch_size], self.framing.pad_id)  # (B, T)
            logits = self.model(ids.to(self.device), mask.to(self.device))  # (B, L)
            out.append(logits.float().softmax(-1).cpu())
        return torch.cat(out)

    def __call__(self, texts: str | list[str]) -> list[Prediction]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not t.strip() for t in texts):
            raise UserError("give at least one text, and no empty ones")
        labels = self.model.labels
        predictions = []
        for row in self.probabilities(texts):
            best = int(row.argmax())
            probs = {name: float(p) for name, p in zip(labels, row)}
            predictions.append(Prediction(labels[best], float(row[best]), probs))
        return predictions


def load_classifier(directory: str | Path, device: str | torch.device = "cpu") -> TextClassifier:
    """The classifier saved by `lmforge finetune --task classify` in `directory`."""
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"classifier not found: {directory}; pass a `lmforge finetune` run")
    model, info = load_sequence_classifier(directory, device)
    tokenizer = Tokenizer.from_file(directory)
    return TextClassifier(model, tokenizer, int(info.get("max_length", model.max_length)))


def main(cfg: ClassifyConfig, out=None) -> list[Prediction]:
    out = out or sys.stdout
    classifier = load_classifier(cfg.model, resolve_device(cfg.device))
    predictions = classifier(cfg.texts)
    for text, p in zip(cfg.texts, predictions):
        out.write(f"{p.label}\t{p.probability:.4f}\t{text}\n")
    out.flush()
    return predictions
