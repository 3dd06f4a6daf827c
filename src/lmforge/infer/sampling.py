"""Choosing the next token from logits.

- temperature: p = softmax(logits / T); T = 0 means greedy (argmax).
- top-k (Fan et al., 2018): keep exactly the k most likely tokens.
- top-p / nucleus (Holtzman et al., 2020): keep the smallest set of most likely tokens whose
  probability mass reaches p (the most likely token is always kept).
- repetition penalty (Keskar et al., 2019, CTRL, section 4.1): a token already in the sequence has
  its logit divided by the penalty when positive and multiplied by it when negative.
The order is the usual one: penalty, temperature, top-k, top-p, then sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.errors import UserError


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop."""

    temperature: float = 0.8
    """Softmax temperature; 0 = greedy decoding."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1]."""
    repetition_penalty: float = 1.0
    """Penalise tokens already in the sequence (1 = off, > 1 discourages repeats)."""
    max_new_tokens: int = 128
    """Most tokens to generate per sequence."""
    seed: int | None = None
    """Seed of the sampling generator (None = nondeterministic)."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise UserError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise UserError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be positive, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """logits (B, V); seen (B, V) boolean, True for tokens already in each sequence."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set all but exactly the k largest logits of each row (B, V) to -inf."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    keep = torch.topk(logits, k, dim=-1).indices  # (B, k)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, keep, logits.gather(-1, keep))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest prefix of tokens (by probability) whose mass reaches p; -inf elsewhere."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p  # the first token has mass_before 0 < p: always kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from the last-position logits (B, V)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
