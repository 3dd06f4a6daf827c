"""AdamW (Loshchilov & Hutter, 2019) with weight-decay groups.

Matrices (linear and embedding weights) are decayed; biases and normalisation gains are not, as in
GPT-2/nanoGPT: decaying a gain or a bias towards zero only fights the normalisation. A task
model's `head` may take its own learning rate: each group's `lr_scale` multiplies the schedule's.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_PREFIX = "head."
"""Parameters under a task model's `head` module (models/heads.py)."""


def param_groups(model: nn.Module, weight_decay: float, head_scale: float = 1.0) -> list[dict]:
    """Trainable parameters in the groups they train in, each with its `weight_decay` and
    `lr_scale`: matrices (decayed), then the rest; with a `head_scale` other than 1, the head's
    matrices and the rest of the head in two more groups."""
    own_head = head_scale != 1.0
    groups: list[list[nn.Parameter]] = [[], [], [], []]
    for name, p in model.named_parameters():  # a shared parameter comes once
        if p.requires_grad:
            in_head = own_head and name.startswith(HEAD_PREFIX)
            groups[2 * in_head + (p.dim() < 2)].append(p)
    kinds = [(weight_decay, 1.0), (0.0, 1.0), (weight_decay, head_scale), (0.0, head_scale)]
    return [
        {"params": params, "weight_decay": decay, "lr_scale": scale}
        for params, (decay, scale) in zip(groups[: 4 if own_head else 2], kinds)
    ]


def make_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    device: torch.device | None = None,
    head_scale: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW with the fused (single-kernel) update where the device supports it; the head's
    learning rate is `head_scale` x lr."""
    kind = (device or next(model.parameters()).device).type
    fused = kind in ("cuda", "cpu", "mps")
    groups = param_groups(model, weight_decay, head_scale)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global L2 norm is at most `max_norm`; return the norm.

    g <- g * min(1, max_norm / (||g||_2 + 1e-6)), with ||g||_2 over every gradient at once (Pascanu
    et al., 2013): the arithmetic of `torch.nn.utils.clip_grad_norm_`, in two multi-tensor kernels
    over a parameter list built once, which matters when a step is a few milliseconds.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # sqrt(sum ||g_i||^2)
    torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    return norm
