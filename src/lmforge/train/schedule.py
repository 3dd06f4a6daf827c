"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

lr(t) = max_lr * (t + 1) / warmup                                       for t < warmup
lr(t) = min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2,  p = (t - warmup) / (decay - warmup)
lr(t) = min_lr                                                          for t >= decay

(Loshchilov & Hutter, 2017, "SGDR", without restarts; the same schedule as nanoGPT.)
"""

from __future__ import annotations

import math


def cosine_lr(
    step: int, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int
) -> float:
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
