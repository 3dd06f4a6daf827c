"""Rotary position embeddings (Su et al., 2021, "RoFormer", eq. 34).

Each pair of channels (i, i + D/2) of a query or key at position m is rotated by the angle
m * theta^(-2i/D). We use the "rotate half" channel layout of GPT-NeoX and Hugging Face Llama, so
Hugging Face weights load unchanged; GGUF files store Q/K rows interleaved for llama.cpp's layout and
are permuted back by the GGUF importer.

Context extension rescales the inverse frequencies theta^(-2i/D) (the `rope_scaling` of Hugging Face
configs, computed here with our own code following `transformers.modeling_rope_utils`):
- "linear" (position interpolation, Chen et al., 2023): every frequency is divided by `factor`.
- "llama3" (Llama 3.1): frequencies whose wavelength 2*pi/f is longer than
  original_max_position_embeddings / low_freq_factor are divided by `factor`, those shorter than
  original_max_position_embeddings / high_freq_factor are kept, and the band between is interpolated
  linearly in original_max_position_embeddings / wavelength.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def inverse_frequencies(
    head_dim: int, theta: float = 10000.0, scaling: dict | None = None
) -> torch.Tensor:
    """The D/2 rotation frequencies theta^(-2i/D) in float64, rescaled by `scaling` (see above)."""
    # Always computed on the CPU (then moved with the module): the tables are small, and under a
    # `torch.device("meta")` context float64 maths on meta tensors would pull in the symbolic
    # machinery of torch (~2 s of imports) for nothing.
    channels = torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu")
    inv_freq = 1.0 / (theta ** (channels / head_dim))
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_frequencies(inv_freq, scaling)
    raise ValueError(f"unknown rope_scaling type {kind!r}; known: linear, llama3")


def _llama3_frequencies(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    long_wave, short_wave = wavelen > old_len / low, wavelen < old_len / high
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the long edge, 1 at the short edge
    between = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(long_wave, inv_freq / factor, between)
    return torch.where(short_wave, inv_freq, scaled)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions [0, max_len); `scaling` as in
    `inverse_frequencies`."""

    def __init__(
        self, head_dim: int, max_len: int, theta: float = 10000.0, scaling: dict | None = None
    ) -> None:
        super().__init__()
        inv_freq = inverse_frequencies(head_dim, theta, scaling)  # (D/2,)
        positions = torch.arange(max_len, dtype=torch.float64, device="cpu")
        angles = torch.outer(positions, inv_freq)  # (L, D/2)
        self.register_buffer("cos", angles.cos().repeat(1, 2).float(), persistent=False)  # (L, D)
        # sin with its first half negated: rotate-half's sign is folded into the table
        signed_sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)  # (L, D)
        self.register_buffer("sin", signed_sin.float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (see `apply_rotary`) for `positions` of shape (T,) or (B, T)."""
        return self.cos[positions], self.sin[positions]  # (T, D) or (B, T, D)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (B, H, T, D) by the tables of `RotaryEmbedding`, (T, D) or (B, T, D).

    With x = [x1, x2] (halves), the rotation is [x1 cos - x2 sin, x2 cos + x1 sin]
    = x * cos + [x2, x1] * [-sin, sin]: the swapped halves are a roll by D/2, and the table holds
    [-sin, sin], so the whole rotation is three kernels (roll, mul, addcmul) instead of six.
    """
    if cos.dim() == 3:
        cos, signed_sin = cos.unsqueeze(1), signed_sin.unsqueeze(1)  # (B, 1, T, D)
    swapped = x.roll(x.size(-1) // 2, dims=-1)  # [x2, x1]
    return torch.addcmul(x * cos, swapped, signed_sin).to(x.dtype)
