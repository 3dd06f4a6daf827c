"""AdamW (Loshchilov & Hutter, 2019) with weight-decay groups.

Matrices (linear and embedding weights) are decayed; biases and normalisation gains are not, as in
GPT-2/nanoGPT: decaying a gain or a bias towards zero only fights the normalisation.
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    device: torch.device | None = None,
) -> torch.optim.AdamW:
    """AdamW with the fused (single-kernel) update where the device supports it."""
    kind = (device or next(model.parameters()).device).type
    fused = kind in ("cuda", "cpu", "mps")
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused
    )


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
