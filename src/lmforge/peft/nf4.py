"""4-bit NormalFloat (NF4) weights, the frozen base of QLoRA (Dettmers et al., 2023, "QLoRA:
Efficient Finetuning of Quantized LLMs", sections 3 and 4).

Pre-trained weights are close to normally distributed, so NF4 puts its 16 levels at quantiles of a
standard normal, scaled to [-1, 1] (with an exact zero): each level then holds about as many
weights as any other. A weight matrix is cut into blocks of 64 values; each block stores its
absolute maximum (absmax) as a scale and each value the index of the nearest level to value /
absmax, two indices per byte:

    w ~ absmax_block * NF4[index],    |w - w_hat| <= absmax_block * max_gap / 2

where max_gap is the widest spacing between neighbouring levels (-0.6962 - (-1) = 0.3038).

Double quantization (section 3, "Double Quantization") quantizes the fp32 scales too: in blocks of
256, each scale minus the mean of all scales is stored as an 8-bit integer (QLoRA uses an 8-bit
float) with one fp32 scale per block, saving about 0.37 bits per parameter. The bound above then
grows by the scale's own error, at most half an 8-bit step of its block:
|w - w_hat| <= absmax * max_gap / 2 + |absmax - absmax_hat|.

`NF4Linear` stores a linear layer this way, 0.5625 bytes per weight (0.516 with double
quantization) against 4 in fp32, and dequantizes the weight at every call, in the run's precision,
and again in the backward pass rather than keeping it (`DequantizedProduct`).
It is frozen; LoRA trains on top of it (peft/lora.py). peft/qlora.py quantizes a model's layers
while its weights are read, so the full-precision model is never in memory at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
"""The 16 NF4 levels (QLoRA, appendix E): normal quantiles scaled to [-1, 1], zero exact."""
MAX_GAP = float((NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max())
BLOCK = 64  # values per absmax scale (QLoRA's block size for weights)
SCALE_BLOCK = 256  # scales per 8-bit block of double quantization


def quantize_nf4(weight: torch.Tensor, double_quant: bool = True) -> dict[str, torch.Tensor]:
    """The NF4 form of `weight` (any shape, numel a multiple of 64): packed indices (numel / 2,)
    uint8 and the block scales (as fp32, or 8-bit codes with their own scales and mean)."""
    flat = weight.detach().float().reshape(-1, BLOCK)  # (blocks, 64)
    absmax = flat.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)  # (blocks,)
    normed = flat / absmax[:, None]  # in [-1, 1]
    midpoints = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]).to(flat.device) / 2  # (15,)
    index = torch.bucketize(normed, midpoints)  # the nearest level's index: (blocks, 64)
    index = index.to(torch.uint8).reshape(-1, 2)
    packed = (index[:, 0] << 4) | index[:, 1]  # two 4-bit indices per byte: (numel / 2,)
    state = {"packed": packed, "shape": torch.tensor(weight.shape)}
    if not double_quant:
        state["absmax"] = absmax
        return state
    mean = absmax.mean()
    centered = absmax - mean
    padded = F.pad(centered, (0, -len(centered) % SCALE_BLOCK)).reshape(-1, SCALE_BLOCK)
    scale = padded.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127  # fp32
    codes = torch.round(padded / scale[:, None]).to(torch.int8).reshape(-1)[: len(absmax)]
    state.update({"absmax_codes": codes, "absmax_scale": scale, "absmax_mean": mean})
    return state


def block_scales(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each 64-value block's absmax (fp32), undoing double quantization if it was used."""
    if "absmax" in state:
        return state["absmax"]
    codes = state["absmax_codes"].float()
    padded = F.pad(codes, (0, -len(codes) % SCALE_BLOCK)).reshape(-1, SCALE_BLOCK)
    scales = (padded * state["absmax_scale"][:, None]).reshape(-1)[: len(codes)]
    return scales + state["absmax_mean"]


def dequantize_nf4(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
    """The weight back from `quantize_nf4`'s state, in `dtype`."""
    packed = state["packed"]
    index = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1, BLOCK).long()
    levels = NF4_LEVELS.to(packed.device)[index]  # (blocks, 64)
    weight = levels * block_scales(state)[:, None]
    return weight.reshape(state["shape"].tolist()).to(dtype)


class DequantizedProduct(torch.autograd.Function):
    """x W^T for an `NF4Linear`'s frozen W, dequantized for the forward pass and again for the
    backward pass instead of being saved for it: autograd would otherwise keep every layer's
    full-precision weight until the backward pass, the memory QLoRA exists to save (bitsandbytes
    does the same). The weight is frozen, so the backward pass gives only x's gradient, g W."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.weight.to(x.dtype))  # (..., out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = ctx.layer.weight.to(grad.dtype)  # (out, in), made again
        return grad @ weight, None  # (..., in)


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4; the bias (if any) stays as it was.

    The quantized weight's tensors (`packed`, the scales, `shape`) are frozen parameters, not
    buffers, as bitsandbytes' `Params4bit` is: they are the layer's weight in another form, so a
    training checkpoint leaves them out with the other frozen weights (train/checkpoint.py)."""

    def __init__(
        self,
        linear: nn.Linear,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        weight, bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if weight.numel() % BLOCK:
            raise ValueError(f"NF4 needs a multiple of {BLOCK} weights, got {weight.numel()}")
        self.compute_dtype = compute_dtype or weight.dtype
        """The dtype the weight is dequantized to at each call (the run's precision)."""
        for name, tensor in quantize_nf4(weight, double_quant).items():
            self.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
        self.storage_names = tuple(quantize_nf4_names(double_quant))
        self.double_quant = double_quant
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
    ) -> NF4Linear:
        """The NF4 layer of a weight (out, in) and bias read from a file (peft/qlora.py)."""
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)  # no copy: quantized at once
        layer = cls(linear, double_quant, compute_dtype)
        layer.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        return layer

    def state(self) -> dict[str, torch.Tensor]:
        """The quantized weight: what `dequantize_nf4` reads."""
        return {name: getattr(self, name) for name in self.storage_names}

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out, in), made afresh at each use."""
        return dequantize_nf4(self.state(), self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = DequantizedProduct.apply(x, self)  # (..., out)
        return y if self.bias is None else y + self.bias

    def storage_bytes(self) -> int:
        """Bytes held for the weight (packed indices and scales)."""
        return sum(t.numel() * t.element_size() for t in self.state().values())

    def to_linear(self) -> nn.Linear:
        """A plain linear layer with the dequantized weight."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight.data = self.weight.detach().clone()
        if self.bias is not None:
            linear.bias.data = self.bias.detach().clone()
        return linear.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, double_quant={self.double_quant}"


def quantize_nf4_names(double_quant: bool) -> tuple[str, ...]:
    """The names of the tensors `quantize_nf4` returns."""
    scales = ("absmax_codes", "absmax_scale", "absmax_mean") if double_quant else ("absmax",)
    return ("packed", "shape", *scales)


def quantizable(model: nn.Module, name: str, module: nn.Module, skip: tuple[str, ...]) -> bool:
    """True for a plain linear layer of `model` that NF4 can hold: not named in `skip` (the output
    layer), a multiple of 64 weights, and a weight of its own (a tied output layer shares the
    embedding table, which stays as it is)."""
    if not isinstance(module, nn.Linear) or name.endswith(skip):
        return False
    tied = getattr(model, "tied_parameter_names", lambda: set())()
    return module.weight.numel() % BLOCK == 0 and f"{name}.weight" not in tied


def quantize_linears(
    model: nn.Module, skip: tuple[str, ...] = ("lm_head",), double_quant: bool = True
) -> list[str]:
    """Replace every `nn.Linear` of `model` that NF4 can hold (`quantizable`) by an `NF4Linear`,
    in place; return the replaced names."""
    replaced = []
    for name, module in list(model.named_modules()):
        if quantizable(model, name, module, skip):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, NF4Linear(module, double_quant))
            replaced.append(name)
    return replaced


def dequantize_linears(model: nn.Module) -> nn.Module:
    """Replace every `NF4Linear` of `model` by a plain `nn.Linear` with its dequantized weight,
    in place: a model every command loads."""
    for name, module in list(model.named_modules()):
        if isinstance(module, NF4Linear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.to_linear())
    return model


def _nf4_storage(model: nn.Module) -> tuple[list[NF4Linear], set[int]]:
    layers = [m for m in model.modules() if isinstance(m, NF4Linear)]
    return layers, {id(t) for layer in layers for t in layer.state().values()}


def count_weights(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor once, an NF4 layer counted as its
    in x out weights (not as the bytes that store them)."""
    layers, storage = _nf4_storage(model)
    unique = {id(p): p for p in model.parameters() if id(p) not in storage}.values()
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    quantized = sum(layer.in_features * layer.out_features for layer in layers)
    return trainable, sum(p.numel() for p in unique) + quantized


def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes the model's parameters take as stored, bytes they would take in fp32): an NF4
    layer's packed indices and scales against 4 bytes for each of its weights."""
    layers, storage = _nf4_storage(model)
    unique = {id(p): p for p in model.parameters()}
    stored = sum(p.numel() * p.element_size() for p in unique.values())
    dense = [p for i, p in unique.items() if i not in storage]
    fp32 = 4 * (sum(p.numel() for p in dense) + sum(m.in_features * m.out_features for m in layers))
    return stored, fp32
