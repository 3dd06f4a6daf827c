"""Bottleneck adapters (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP",
section 2.1 and figure 2).

A small module is inserted twice in every layer, after the attention sublayer's output projection
and after the MLP, each before the residual connection adds the sublayer's output back:

    adapter(h) = h + W_up f(W_down h + b_down) + b_up,    W_down: (m, d), W_up: (d, m), m << d

a projection down to a bottleneck of m features, a nonlinearity f (GELU here), a projection back up
to d, and a skip connection. Each adapter has 2md + d + m parameters, so the bottleneck m sets the
cost (the paper tries m in {8, 64, 256}). Houlsby et al. train the adapters, the layer
normalisation parameters and the task's head, and freeze the rest (`adapter.train_norms`).

Initialisation: the paper starts near the identity (small weights). Here W_up and b_up start at
zero, so a fresh adapter is exactly the identity and the adapted model's outputs are bit-identical
to the base's; W_down keeps `nn.Linear`'s own initialisation, so the first updates of W_up see
features of a useful size (as LoRA's A, peft/lora.py).

`apply_adapters` wraps modules in place (never by subclassing the model): every attention block's
`o_proj` and every MLP becomes `WithAdapter`, computing adapter(module(x)), the wrapped module kept
as its child `base`. Every family builds its layers from the shared nn/ blocks, so the same code
adapts decoders, encoders and encoder-decoders (whose decoder layers gain one more, after the
cross-attention).

Unlike LoRA, an adapter cannot be folded into the weights (f is not linear): the adapted model
keeps the modules. A fine-tuning run saves the base weights with the adapter beside them and
loading rebuilds it (peft/adapter_files.py); export to formats with no place for it (Hugging Face,
GGUF) is refused (recipes/convert.py).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import UserError
from lmforge.nn import Attention, GeluMLP, ReluMLP, RMSNorm
from lmforge.nn.mlp import GatedMLP

MLP_TYPES = (GeluMLP, GatedMLP, ReluMLP)
NORM_TYPES = (nn.LayerNorm, RMSNorm)
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class Bottleneck(nn.Module):
    """h + up(gelu(down(h))): (..., d) -> (..., d); the identity while `up` is zero."""

    def __init__(self, dim: int, bottleneck: int, like: torch.Tensor | None = None) -> None:
        super().__init__()
        if bottleneck < 1:
            raise UserError(f"adapter bottleneck must be at least 1, got {bottleneck}")
        factory = {} if like is None else {"dtype": like.dtype, "device": like.device}
        self.down = nn.Linear(dim, bottleneck, **factory)  # nn.Linear's initialisation
        self.up = nn.Linear(bottleneck, dim, **factory)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))  # (..., m) in between


class WithAdapter(nn.Module):
    """A module followed by a bottleneck adapter: adapter(base(*args, **kwargs))."""

    def __init__(self, base: nn.Module, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.base = base
        self.adapter = Bottleneck(dim, bottleneck, like=next(base.parameters()))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.adapter(self.base(*args, **kwargs))

    def extra_repr(self) -> str:
        return f"bottleneck={self.adapter.down.out_features}"


def layer_index(name: str) -> int | None:
    """The layer number in a module name (`layers.3.mlp` -> 3), or None outside the layers."""
    match = _LAYER_INDEX.search(f"{name}.")
    return int(match.group(1)) if match else None


def adapter_targets(model: nn.Module, layers: list[int] | None = None) -> list[str]:
    """The names of the modules Houlsby adapters follow: every attention block's output
    projection and every MLP, in the layers numbered `layers` (None or empty: all of them)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            names.append(f"{name}.o_proj")
        elif isinstance(module, MLP_TYPES):
            names.append(name)
    if not names:
        raise UserError("the model has no attention or MLP blocks to put adapters after")
    if layers:
        present = {layer_index(n) for n in names} - {None}
        missing = sorted(set(layers) - present)
        if missing:
            raise UserError(
                f"adapter.layers {missing} are not layers of the model (it has layers "
                f"0-{max(present)})"
            )
        names = [n for n in names if layer_index(n) in set(layers)]
    return names


def apply_adapters(model: nn.Module, names: list[str], bottleneck: int) -> list[str]:
    """Wrap each named module of `model` in a `WithAdapter` (in place); return the names. The
    adapters are trainable; what they wrap keeps its `requires_grad`."""
    wrappers = {}
    for name in names:
        module = model.get_submodule(name)
        dim = (
            module.out_features if isinstance(module, nn.Linear) else module.down_proj.out_features
        )
        wrappers[name] = WithAdapter(module, dim, bottleneck)
    for name, wrapper in wrappers.items():  # all built first: a bad setting changes nothing
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrapper)
    return list(names)


def norm_modules(model: nn.Module) -> list[nn.Module]:
    """The layer normalisations (LayerNorm, RMSNorm) of `model`, which Houlsby et al. also train."""
    return [m for m in model.modules() if isinstance(m, NORM_TYPES)]
