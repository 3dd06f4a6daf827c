"""Extractive question answering: best-span decoding and the SQuAD v1.1 metrics.

Decoding (Devlin et al., 2019, "BERT", section 4.2): the answer is the span (s, e) of context tokens
with s <= e and e - s + 1 <= max_answer_tokens that maximises start_logit[s] + end_logit[e];
positions outside the context (question, special tokens, padding) are never candidates. Its score
is the span's probability under the model, softmax(start)[s] * softmax(end)[e], both softmaxes
taken over the context positions only.

Metrics: exact match and token F1 exactly as the official SQuAD v1.1 evaluation script computes
them (`evaluate-v1.1.py`, Rajpurkar et al., 2016, https://rajpurkar.github.io/SQuAD-explorer/):
both strings are normalised (lower case; punctuation removed; the articles a / an / the removed;
runs of whitespace made one space), then

    EM = 1 if normalised prediction == normalised gold else 0
    F1 = 2 P R / (P + R),  P = |common tokens| / |prediction tokens|,
                           R = |common tokens| / |gold tokens|   (common: multiset intersection)

each taken as the maximum over the example's gold answers and averaged over the examples (the
script reports them x 100; here they are fractions, like the other metrics of lmforge).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lmforge.models.span_heads import mask_outside_context

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised tokens (0 when they share none, as the official script)."""
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def best_over_gold(
    metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]
) -> float:
    """The metric against the closest of the gold answers."""
    return max(metric(prediction, gold) for gold in golds)


@dataclass
class QAMetrics:
    exact_match: float
    f1: float
    count: int
    predictions: list[str] = field(default_factory=list, repr=False)
    """The predicted answer of every example, in split order (for the report's examples)."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}exact_match": self.exact_match, f"{prefix}f1": self.f1}

    def summary(self) -> str:
        return f"EM {self.exact_match:.4f} (F1 {self.f1:.4f})"


def qa_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> QAMetrics:
    """Mean EM and F1 of the predictions against each example's gold answers."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} examples")
    n = len(predictions)
    em = sum(best_over_gold(exact_match, p, g) for p, g in zip(predictions, golds))
    f1 = sum(best_over_gold(token_f1, p, g) for p, g in zip(predictions, golds))
    return QAMetrics(em / max(n, 1), f1 / max(n, 1), n, list(predictions))


# -------------------------------------------------------------------------------- decoding
def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    context_mask: torch.Tensor,
    max_answer_tokens: int = 30,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(start, end, probability), each (B,), of the best span of each row.

    start_logits, end_logits: (B, T); context_mask: (B, T), True at context tokens (every row has
    at least one). The span maximises start + end logit over s <= e < s + max_answer_tokens.
    """
    if max_answer_tokens < 1:
        raise ValueError(f"max_answer_tokens must be at least 1, got {max_answer_tokens}")
    B, T = start_logits.shape
    context = context_mask.bool()
    log_p_start = mask_outside_context(start_logits, context).log_softmax(-1)  # (B, T)
    log_p_end = mask_outside_context(end_logits, context).log_softmax(-1)  # (B, T)
    pair = log_p_start[:, :, None] + log_p_end[:, None, :]  # (B, T, T): [b, start, end]
    index = torch.arange(T, device=start_logits.device)
    length = index[None, :] - index[:, None]  # (T, T): end - start
    allowed = (length >= 0) & (length < max_answer_tokens)  # (T, T)
    allowed = allowed[None] & context[:, :, None] & context[:, None, :]  # (B, T, T)
    pair = pair.masked_fill(~allowed, float("-inf"))
    best = pair.view(B, T * T).argmax(-1)  # (B,)
    starts, ends = best // T, best % T
    probability = pair.view(B, T * T).gather(1, best[:, None]).squeeze(1).exp()
    return starts, ends, probability
