"""Training objectives as pure functions: loss = objective(model, batch).

An objective takes the model and one batch and returns the mean loss over the predicted tokens.
The training loop picks one from `OBJECTIVES` by name; later families add masked-LM and
span-corruption objectives here without touching the loop.

causal_lm: next-token cross-entropy, L = -1/N sum_t log p(x_{t+1} | x_{<=t}) (Radford et al., 2018),
computed from the final hidden states by the fused output-layer cross-entropy of fused_ce.py.
Targets equal to IGNORE_INDEX (-100) do not count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lmforge.train.fused_ce import linear_cross_entropy

Batch = tuple[torch.Tensor, torch.Tensor]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of predicting targets y (B, T) from inputs x (B, T)."""
    x, y = batch
    hidden = model(x, return_hidden=True)  # (B, T, C)
    return linear_cross_entropy(hidden, unwrap(model).lm_head.weight, y)


OBJECTIVES: dict[str, Callable[[nn.Module, Batch], torch.Tensor]] = {
    "causal_lm": causal_lm_loss,
}
