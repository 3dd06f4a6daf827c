"""Position-wise feed-forward blocks.

- GeluMLP (GPT-2, BERT): down_proj(gelu(up_proj(x))), GELU (Hendrycks & Gimpel, 2016) exact
  (erf) or with the tanh approximation that GPT-2 was trained with.
- SwiGLUMLP (Shazeer, 2020, "GLU Variants Improve Transformer"; Llama):
  down_proj(silu(gate_proj(x)) * up_proj(x)).
- ReluMLP (Vaswani et al., 2017; the original T5): down_proj(relu(up_proj(x))).
- GatedGeluMLP (Shazeer, 2020, GEGLU; T5 v1.1 "gated-gelu", tanh-approximated GELU):
  down_proj(gelu(gate_proj(x)) * up_proj(x)); T5 calls the three wi_0, wi_1 and wo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.nn.fused import fused_projections


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True, approximate: str = "tanh") -> None:
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate=self.approximate))


class GatedMLP(nn.Module):
    """down_proj(activation(gate_proj(x)) * up_proj(x)); subclasses choose the activation."""

    projection_groups = (("gate_proj", "up_proj"),)  # one input: see nn/fused.py

    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    @staticmethod
    def activation(gate: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = fused_projections(x, [self.gate_proj, self.up_proj])
        return self.down_proj(self.activation(gate) * up)


class SwiGLUMLP(GatedMLP):
    activation = staticmethod(F.silu)


class ReluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)))


class GatedGeluMLP(GatedMLP):
    @staticmethod
    def activation(gate: torch.Tensor) -> torch.Tensor:
        return F.gelu(gate, approximate="tanh")
