"""Training objectives as pure functions: loss = objective(model, batch).

An objective takes the model and one batch and returns the mean loss over the predicted tokens.
The training loop picks one from `OBJECTIVES` by name; later families add masked-LM and
span-corruption objectives here without touching the loop.

causal_lm: next-token cross-entropy, L = -1/N sum_t log p(x_{t+1} | x_{<=t}) (Radford et al., 2018).
Targets equal to IGNORE_INDEX (-100) do not count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
Batch = tuple[torch.Tensor, torch.Tensor]


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of predicting targets y (B, T) from inputs x (B, T)."""
    x, y = batch
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(
        logits.view(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=IGNORE_INDEX
    )


OBJECTIVES: dict[str, Callable[[nn.Module, Batch], torch.Tensor]] = {
    "causal_lm": causal_lm_loss,
}
