"""Helpers shared by the test suites (on the path through `pythonpath` in pyproject.toml)."""

import torch

from lmforge.models import GPT, get_preset

TINY_SHAPE = dict(
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=64,
    max_seq_len=64,
)


def tiny_gpt(preset: str, vocab_size: int, seed: int = 0, **overrides) -> GPT:
    """A randomly initialised model of `preset` at a tiny shape (TINY_SHAPE, then `overrides`)."""
    torch.manual_seed(seed)
    return GPT(get_preset(preset, vocab_size=vocab_size, **{**TINY_SHAPE, **overrides}))
