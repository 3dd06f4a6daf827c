"""Text-to-text metrics over generated outputs: ROUGE-1/2/L, BLEU and chrF, all on a 0-100 scale.

- ROUGE-N F-measure (Lin, 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"): the
  harmonic mean of n-gram precision and recall between a prediction and its reference; ROUGE-L
  uses the longest common subsequence instead of n-grams. Computed per example by Google's
  `rouge-score` (the reimplementation of the original Perl script used by the T5 paper), with the
  Porter stemmer (`use_stemmer=True`), then averaged over the examples. Its tokenizer lower-cases
  and keeps only letters and digits, so punctuation does not count.
- BLEU (Papineni et al., 2002): corpus-level geometric mean of clipped 1- to 4-gram precisions
  times the brevity penalty, by `sacrebleu` with its defaults (13a tokenization, exponential
  smoothing; Post, 2018, "A Call for Clarity in Reporting BLEU Scores").
- chrF (Popovic, 2015): corpus-level character n-gram (n <= 6) F-score with beta = 2, by
  `sacrebleu` (`corpus_chrf`, its defaults). It gives partial credit to near-miss words, so it
  moves before BLEU does for a small model.

Identical non-empty strings score 100 on each (BLEU needs at least four words for a 4-gram), and
strings without a common character n-gram or word score 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass
class Text2TextMetrics:
    """Scores (0-100) of predictions against references, and the outputs they were computed on."""

    rouge1: float
    rouge2: float
    rouge_l: float
    bleu: float
    chrf: float
    count: int
    """Number of examples scored."""
    predictions: list[str] = field(default_factory=list, repr=False)
    """The generated texts that were scored, in the order of the split."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}rouge1": self.rouge1,
            f"{prefix}rouge2": self.rouge2,
            f"{prefix}rougeL": self.rouge_l,
            f"{prefix}bleu": self.bleu,
            f"{prefix}chrf": self.chrf,
            f"{prefix}examples_scored": self.count,
        }

    def summary(self) -> str:
        return (
            f"chrF {self.chrf:.1f}, BLEU {self.bleu:.1f}, ROUGE-1/2/L {self.rouge1:.1f}/"
            f"{self.rouge2:.1f}/{self.rouge_l:.1f} ({self.count} example"
            + ("s)" if self.count != 1 else ")")
        )


def text2text_metrics(predictions: Sequence[str], references: Sequence[str]) -> Text2TextMetrics:
    """ROUGE-1/2/L F-measure (mean over examples), corpus BLEU and corpus chrF of `predictions`
    against `references` (one reference per prediction)."""
    import sacrebleu  # imported here: rouge-score loads nltk, slow to import
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    predictions = [p.strip() for p in predictions]
    references = [r.strip() for r in references]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    n = len(predictions)
    return Text2TextMetrics(
        rouge1=100 * totals["rouge1"] / n,
        rouge2=100 * totals["rouge2"] / n,
        rouge_l=100 * totals["rougeL"] / n,
        bleu=sacrebleu.corpus_bleu(predictions, [references]).score,
        chrf=sacrebleu.corpus_chrf(predictions, [references]).score,
        count=n,
        predictions=list(predictions),
    )
