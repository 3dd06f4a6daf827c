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

Projections of the same input (attention's q/k/v, SwiGLU's gate/up) are also grouped: their weights
move into consecutive rows of one buffer, each parameter becoming a view of its rows (no second
copy), and `DecodeGroup` runs them as one product: fewer, larger kernels per token (about 7% at
batch 1 on SmolLM2-135M). `nn.fused.fused_projections` picks the group up while it is current.
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
        return decode_product(x, self.weight, self.bias)


def decode_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, as a per-core split product when x has few rows (see above)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    if rows > MAX_ROWS or torch.is_grad_enabled() or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    blocks = torch.get_num_threads()
    if out_features % blocks:
        blocks = 1
    size = out_features // blocks
    w = weight.view(blocks, size, in_features)  # (k, out/k, in)
    xt = x.reshape(rows, in_features).t().expand(blocks, -1, -1)  # (k, in, rows)
    # y: (k, out/k, rows), the bias added inside the product
    y = torch.bmm(w, xt) if bias is None else torch.baddbmm(bias.view(blocks, size, 1), w, xt)
    y = y.view(out_features, rows)  # (out, rows)
    y = y.t().contiguous() if rows > 1 else y.view(1, -1)  # (rows, out), rows contiguous
    return y.view(*x.shape[:-1], out_features)


class DecodeGroup:
    """Linear layers of one input whose weights are consecutive rows of one buffer.

    Not a module (it owns no parameters: the layers' parameters are views of its buffer), so state
    dicts are unchanged. It stays attached to the first layer as `decode_group`.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.linears = list(linears)
        self.sizes = [linear.out_features for linear in linears]
        with torch.no_grad():
            self.weight = torch.cat([linear.weight for linear in linears])  # (sum of out, in)
            self.bias = (
                torch.cat([linear.bias for linear in linears])
                if linears[0].bias is not None
                else None
            )
        for linear, rows in zip(linears, self.weight.split(self.sizes)):
            linear.weight.data = rows  # the parameter now views its rows: one copy in memory
        if self.bias is not None:
            for linear, rows in zip(linears, self.bias.split(self.sizes)):
                linear.bias.data = rows
        self.pointers = [_pointers(linear) for linear in linears]
        linears[0].decode_group = self

    def serves(self, linears: list[nn.Module]) -> bool:
        """True while `linears` are still these layers and still view this buffer."""
        return (
            len(linears) == len(self.linears)
            and all(a is b for a, b in zip(linears, self.linears))
            and all(_pointers(linear) == p for linear, p in zip(linears, self.pointers))
        )

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(decode_product(x, self.weight, self.bias).split(self.sizes, dim=-1))


def _pointers(linear: nn.Module) -> tuple[int, int | None]:
    """Where a layer's weight and bias live (a replaced tensor moves them)."""
    return linear.weight.data_ptr(), None if linear.bias is None else linear.bias.data_ptr()


def use_decode_linears(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` in `model` by a `DecodeLinear` sharing its weights, and group the
    projections of the same input (q/k/v, gate/up) into one buffer each (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, DecodeLinear(child))
    for module in model.modules():
        for names in getattr(module, "projection_groups", ()):
            linears = [getattr(module, name) for name in names]
            groupable = all(type(linear) is DecodeLinear for linear in linears)
            same_bias = len({linear.bias is None for linear in linears}) == 1
            existing = getattr(linears[0], "decode_group", None)
            if groupable and same_bias and not (existing and existing.serves(linears)):
                DecodeGroup(linears)
    return model
