"""Linear layers for decoding: the same weights, a matrix product that keeps every core busy.

Decoding multiplies a handful of rows (one per sequence) by every weight matrix, so its speed is how
fast the weights stream from memory. For so few rows, `x @ W.T` (what `nn.Linear` does) lands in a
BLAS matrix-vector kernel that here runs on one core and streams ~11 GB/s (ANCHORS.md machine):
half or less of what the memory delivers.

Instead we put the weight on the left and cut its rows into one block per thread,

    W (out, in) -> (k, out/k, in);   y^T = bmm(W_blocks, x^T expanded to (k, in, rows))

a batched product whose batch dimension the BLAS spreads over the cores, each streaming its own
block. The numbers are the same; decoding at batch 1 and 8 runs about 2x faster on two cores
(benchmarks/bench_decode.py). The weights are views, never copies.

`DecodeLinear` subclasses `nn.Linear` and shares its parameters, so state dicts, training and later
substitutions (LoRA, quantization) still see an ordinary linear layer; with gradients enabled, on a
GPU, or for many rows (prefill, training) it is exactly `nn.Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 64  # above this, nn.Linear's own GEMM is the better kernel


class DecodeLinear(nn.Linear):
    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # shared, not copied (tied embeddings stay tied)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > MAX_ROWS or torch.is_grad_enabled() or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        blocks = torch.get_num_threads()
        if self.out_features % blocks:
            blocks = 1
        size = self.out_features // blocks
        w = self.weight.view(blocks, size, self.in_features)  # (k, out/k, in)
        xt = x.reshape(rows, self.in_features).t().expand(blocks, -1, -1)  # (k, in, rows)
        if self.bias is None:
            y = torch.bmm(w, xt)  # (k, out/k, rows)
        else:
            y = torch.baddbmm(self.bias.view(blocks, size, 1), w, xt)  # (k, out/k, rows)
        y = y.view(self.out_features, rows)  # (out, rows)
        y = y.t().contiguous() if rows > 1 else y.view(1, -1)  # (rows, out), rows contiguous
        return y.view(*x.shape[:-1], self.out_features)


def use_decode_linears(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` in `model` by a `DecodeLinear` sharing its weights (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, DecodeLinear(child))
    return model
