"""Replay against catastrophic forgetting: original-domain batches mixed into fine-tuning.

Fine-tuning on a new task moves the weights away from what served the original distribution, and
the model's original ability degrades: catastrophic forgetting (McCloskey & Cohen, 1989; Kirkpatrick
et al., 2017, for neural networks; Luo et al., 2023, for instruction-tuned LLMs). Rehearsal, or
replay (Robins, 1995), keeps training on the original domain alongside: every step draws one batch
of the new task and one batch of original-domain text, and minimises

    L = alpha * L_original + (1 - alpha) * L_new

where L_original is the causal-LM cross-entropy of the original text (train/losses.py), L_new the
task's loss, and alpha in [0, 1) the weight of replay (alpha = 0 is plain fine-tuning).

`ReplayBatches` wraps the task's batch source and appends the original-domain batch (x, y) to each
task batch; `replay_objective` splits them again. Validation batches carry replay too (fixed
windows of the original text's held-out part), so the validation loss is the mixed objective the
run minimises. The LM loss runs through the task model's backbone (its `backbone`, else the model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from lmforge.data.shards import TokenData
from lmforge.errors import UserError
from lmforge.train.losses import causal_lm_loss


class ReplayBatches:
    """The task's batches, each followed by a batch (x, y) of original-domain text."""

    def __init__(self, task_data, original: TokenData, batch_size: int, block_size: int) -> None:
        self.task_data = task_data
        self.original = original
        self.batch_size = batch_size
        self.block_size = block_size
        self.max_length = task_data.max_length

    def size(self, split: str) -> int:
        return self.task_data.size(split)

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int = 0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ...]:
        task = self.task_data.get_batch(split, batch_size, block_size, generator)
        part = "train" if split == "train" else "val"
        replay = self.original.get_batch(part, self.batch_size, self.block_size, generator)
        return (*task, *replay)

    def iter_eval_batches(
        self, split: str, batch_size: int, block_size: int = 0, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        for i, task in enumerate(
            self.task_data.iter_eval_batches(split, batch_size, block_size, max_batches)
        ):
            window = torch.Generator().manual_seed(i)  # the same held-out windows every time
            yield (*task, *self.original.get_batch("val", self.batch_size, self.block_size, window))


def replay_objective(
    task_loss: Callable[[nn.Module, tuple], torch.Tensor], alpha: float
) -> Callable[[nn.Module, tuple], torch.Tensor]:
    """The mixed loss alpha * L_original + (1 - alpha) * L_new over `ReplayBatches` batches."""
    if not 0 <= alpha < 1:
        raise UserError(f"replay.alpha must be in [0, 1), got {alpha}")

    def loss(model: nn.Module, batch: tuple) -> torch.Tensor:
        *task, x, y = batch
        new = task_loss(model, tuple(task))
        lm = getattr(getattr(model, "module", model), "backbone", model)
        original = causal_lm_loss(lm, (x, y))
        return alpha * original + (1 - alpha) * new

    return loss
