"""Linear layers for decoding: the same weights, a matrix product that keeps every core busy.

Decoding multiplies a handful of rows (one per sequence) by every weight matrix, so its speed is how
fast the weights stream from memory. For so few rows, `x @ W.T` (what `nn.Linear` does) lands in a
BLAS matrix-vector kernel that here runs on one core and streams ~11 GB/s (ANCHORS.md machine):
half or less of what the memory delivers.

Instead, for one to five rows, we put the weight on the left and cut its rows into one block per
thread,

    W (out, in) -> (k, out/k, in);   y^T = bmm(W_blocks, x^T expanded to (k, in, rows))

a batched product whose batch dimension the BLAS spreads over the cores, each streaming its own
block. For six rows or more (batched decoding), the BLAS's own kernels for a few rows do less
arithmetic per second than the weights could stream (~50 GFLOP/s at 8 rows here, a third of
its large-product rate), so we cut the weight into narrow blocks of 16 output features and put
the activations on the left,

    W (out, in) -> (out/16, 16, in), each block read transposed: (out/16, in, 16)
    y = bmm(x expanded to (out/16, rows, in), W_blocks)  ->  (out/16, rows, 16)  ->  (rows, out)

many small products whose 16 columns of W are read as rows of a transposed operand: about 20%
faster than either the per-thread split or `F.linear` at 8 to 32 rows on SmolLM2-135M's shapes
(slower at 2 to 4 rows). The numbers are the same; decoding at batch 1 and 8 runs about 2x faster
on two cores than with `nn.Linear` (benchmarks/bench_decode.py). The weights are views, never
copies.

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
MIN_BLOCKED_ROWS = 6  # from here on, column blocks beat one weight block per thread
COLUMN_BLOCK = 16  # output features per block of column_block_product


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
    """`F.linear(x, weight, bias)`, with the product chosen for few rows (see above)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    if rows > MAX_ROWS or torch.is_grad_enabled() or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    x2 = x.reshape(rows, in_features)
    if rows >= MIN_BLOCKED_ROWS and out_features % COLUMN_BLOCK == 0:
        y = column_block_product(x2, weight, bias)
    else:
        y = thread_split_product(x2, weight, bias)
    return y.view(*x.shape[:-1], out_features)


def thread_split_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (rows, in) times weight (out, in) transposed, as one weight block per thread: (rows, out)."""
    out_features, in_features = weight.shape
    rows = x.size(0)
    blocks = thread_count()
    if out_features % blocks:
        blocks = 1
    size = out_features // blocks
    w = weight.view(blocks, size, in_features)  # (k, out/k, in)
    xt = x.t().expand(blocks, -1, -1)  # (k, in, rows)
    # y: (k, out/k, rows), the bias added inside the product
    y = torch.bmm(w, xt) if bias is None else torch.baddbmm(bias.view(blocks, size, 1), w, xt)
    y = y.view(out_features, rows)  # (out, rows)
    return y.t().contiguous() if rows > 1 else y.view(1, -1)  # (rows, out), rows contiguous


def thread_count() -> int:
    """Threads the products are split over. Compiled decoding marks it a constant of its graph
    (`infer/compiled.py`), here not at import: that would import TorchDynamo (seconds) into every
    command."""
    return torch.get_num_threads()


def column_block_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (rows, in) times weight (out, in) transposed, in blocks of 16 output features: (rows, out)."""
    out_features, in_features = weight.shape
    rows, blocks = x.size(0), out_features // COLUMN_BLOCK
    w = weight.view(blocks, COLUMN_BLOCK, in_features).transpose(1, 2)  # (out/16, in, 16), a view
    xs = x.expand(blocks, rows, in_features)  # (out/16, rows, in), a view
    if bias is None:
        y = torch.bmm(xs, w)  # (out/16, rows, 16)
    else:
        y = torch.baddbmm(bias.view(blocks, 1, COLUMN_BLOCK), xs, w)
    return y.transpose(0, 1).reshape(rows, out_features)  # (rows, out)


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
        """True while `linears` are still these layers and still view this buffer. Inside a
        compiled decoding step only the layers are compared (addresses cannot be traced); the
        buffers were checked when the engine started (`use_decode_linears`)."""
        same_layers = len(linears) == len(self.linears) and all(
            a is b for a, b in zip(linears, self.linears)
        )
        if torch.compiler.is_compiling():
            return same_layers
        return same_layers and all(
            _pointers(linear) == p for linear, p in zip(linears, self.pointers)
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """All the layers' outputs side by side: (..., sum of out)."""
        return decode_product(x, self.weight, self.bias)


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
