"""Several linear projections of the same input as one matrix product.

Attention's query, key and value projections (and SwiGLU's gate and up projections) all multiply
the same activations. Concatenating their weights along the output dimension,

    [q | k | v] = x [W_q; W_k; W_v]^T + [b_q; b_k; b_v],

gives one larger GEMM instead of three small ones: the BLAS runs closer to its peak on the wider
product, and the backward pass computes one input gradient and one weight gradient instead of three
each (about 1.5% of a training step at nanoGPT's width of 128 on a CPU, benchmarks/README.md).

The projections stay separate `nn.Linear` children with their own names and parameters, so
checkpoints, converters and in-place substitutions (LoRA, quantization, decoding kernels) see
them as usual: when any of them is not a plain `nn.Linear`, or when there are too few rows for
the product to outweigh copying the weights, each runs on its own. A module lists its groups in
`projection_groups`. For decoding, `infer.fast_linear` moves a group's weights into one buffer
for good (`DecodeGroup`, attached to the first projection as `decode_group`), which is then used
without any copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 32  # below this, copying the weights costs more than the fused product saves


def fused_projection(x: torch.Tensor, projections: list[nn.Module]) -> torch.Tensor:
    """`torch.cat([p(x) for p in projections], -1)`: (..., sum of out), as one product if it can."""
    y = _one_product(x, projections)
    return torch.cat([p(x) for p in projections], dim=-1) if y is None else y


def fused_projections(x: torch.Tensor, projections: list[nn.Module]) -> list[torch.Tensor]:
    """`[p(x) for p in projections]`, computed as one product when they are plain nn.Linear."""
    y = _one_product(x, projections)
    if y is None:
        return [p(x) for p in projections]
    return list(y.split([p.out_features for p in projections], dim=-1))


def _one_product(x: torch.Tensor, projections: list[nn.Module]) -> torch.Tensor | None:
    """The projections' outputs side by side from one product (..., sum of out), or None when they
    must run one by one (not all plain nn.Linear, too few rows, or mixed biases)."""
    group = getattr(projections[0], "decode_group", None)
    if group is not None and not torch.is_grad_enabled() and group.serves(projections):
        return group(x)
    plain = all(type(p) is nn.Linear for p in projections)
    rows = x.numel() // x.size(-1)
    if not plain or rows < MIN_ROWS or len({p.bias is None for p in projections}) != 1:
        return None
    weight = torch.cat([p.weight for p in projections])  # (sum of out, in)
    bias = None if projections[0].bias is None else torch.cat([p.bias for p in projections])
    return F.linear(x, weight, bias)  # (..., sum of out)
