"""Normalisation layers.

- LayerNorm (Ba et al., 2016): y = (x - mean) / sqrt(var + eps) * w + b, as in GPT-2 and BERT.
- RMSNorm (Zhang & Sennrich, 2019): y = x / sqrt(mean(x^2) + eps) * w, as in Llama and T5 (T5 calls
  it "LayerNorm without mean subtraction"). The mean of squares is taken in fp32 for stability.
  At inference on a CPU, where `F.rms_norm` is a chain of small kernels, it runs LayerNorm's
  fused kernel instead: [x, -x] has mean 0 and variance mean(x^2), so the first half of
  LayerNorm([x, -x]) is x / sqrt(mean(x^2) + eps) (about 1 ms less per decoded token on
  SmolLM2-135M, benchmarks/README.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            if not torch.is_grad_enabled() and x.device.type == "cpu":
                return _rms_norm_as_layer_norm(x, self.weight, self.eps)
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        y = F.rms_norm(x.float(), (x.size(-1),), None, self.eps)
        return self.weight * y.to(x.dtype)


def _rms_norm_as_layer_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm through LayerNorm's fused kernel: [x, -x] has mean 0 and variance mean(x^2)."""
    C = x.size(-1)
    both = torch.cat([x, -x], dim=-1)  # (..., 2C)
    return F.layer_norm(both, (2 * C,), None, None, eps)[..., :C] * weight


def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """A `layernorm` (with or without bias) or an `rmsnorm` of width `dim`."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")
