"""Rotary position embeddings (Su et al., 2021, "RoFormer", eq. 34).

Each pair of channels (i, i + D/2) of a query or key at position m is rotated by the angle
m * theta^(-2i/D). We use the "rotate half" channel layout of GPT-NeoX and Hugging Face Llama, so
Hugging Face weights load unchanged; GGUF files store Q/K rows interleaved for llama.cpp's layout and
are permuted back by the GGUF importer.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions [0, max_len)."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, D)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for integer `positions` of shape (T,) or (B, T)."""
        return self.cos[positions], self.sin[positions]  # (T, D) or (B, T, D)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (B, H, T, D) by cos/sin of shape (T, D) or (B, T, D)."""
    if cos.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D)
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
