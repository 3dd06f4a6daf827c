"""Evaluation: sliding-window perplexity and bits per byte (`perplexity.py`); classification
accuracy, F1 and confusion matrix (`classification.py`)."""

from lmforge.eval.perplexity import PerplexityResult, perplexity, sliding_windows

__all__ = ["PerplexityResult", "perplexity", "sliding_windows"]
