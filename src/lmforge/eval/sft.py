"""Scores of an instruction-tuned model: the loss on the assistant's tokens and exact match.

- assistant-token loss: mean cross-entropy of every assistant token and end-of-turn token of the
  split (what SFT minimises; data/sft.py), and its perplexity exp(loss).
- exact match: the share of generated answers equal to the reference once whitespace is
  normalised (stripped, runs collapsed to one space). Case and punctuation count: "HELLO" is not
  "hello", "3, 5" is not "3 5", since the generated instruction set (data/instructions.py) asks
  for exact formats. This is stricter than SQuAD's answer normalisation (eval/qa.py), which drops
  case, punctuation and articles because its references are spans of prose.
- answer contained: the share of generated answers that contain the normalised reference, a
  lenient score that tells "right but wrapped in a sentence" from "wrong".
Both are also broken down by the conversations' kinds, where they have one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field


def normalize_answer(text: str) -> str:
    """`text` stripped, with every run of whitespace made one space."""
    return " ".join(text.split())


@dataclass
class SFTMetrics:
    loss: float
    """Mean cross-entropy per assistant token."""
    tokens: int
    """Assistant tokens the loss is over."""
    exact_match: float
    contains: float
    count: int
    """Answers generated and scored."""
    predictions: list[str] = field(default_factory=list)
    by_kind: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Kind -> (exact match, answers scored)."""

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        values = {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "exact_match": self.exact_match,
            "contains": self.contains,
            "count": self.count,
        }
        return {prefix + k: v for k, v in values.items()}

    def summary(self) -> str:
        return (
            f"exact match {self.exact_match:.4f} (contains {self.contains:.4f}, "
            f"{self.count:,} answers), assistant loss {self.loss:.4f}"
        )


def answer_scores(
    predictions: Sequence[str], references: Sequence[str], kinds: Sequence[str | None]
) -> tuple[float, float, dict[str, tuple[float, int]]]:
    """(exact match, answer contained, kind -> (exact match, count)) over the pairs."""
    if not references:
        return 0.0, 0.0, {}
    exact, contained = [], []
    per_kind: dict[str, list[bool]] = defaultdict(list)
    for prediction, reference, kind in zip(predictions, references, kinds):
        p, r = normalize_answer(prediction), normalize_answer(reference)
        exact.append(p == r)
        contained.append(r in p)
        if kind is not None:
            per_kind[kind].append(p == r)
    by_kind = {k: (sum(v) / len(v), len(v)) for k, v in sorted(per_kind.items())}
    return sum(exact) / len(exact), sum(contained) / len(contained), by_kind
