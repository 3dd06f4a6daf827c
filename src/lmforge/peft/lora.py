"""LoRA: low-rank adapters on linear layers (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", section 4.1, eq. 3).

A frozen weight W0 (out, in) is adapted by a product of two small trainable matrices:

    h = W0 x + (alpha / r) B A x,     A: (r, in), B: (out, r), r << min(in, out)

A starts Kaiming-uniform and B at zero, so a fresh adapter leaves every output unchanged, and
training starts from the pre-trained model. alpha / r scales the update so that changing r does not
change the effective learning rate much (the paper sets alpha to the first r it tries and leaves it).
Dropout, when set, applies to the adapter's input only.

`apply_lora` replaces the chosen `nn.Linear` children in place by `LoRALinear` wrappers (never by
subclassing the model): the base layer stays a child (`base`), so its parameters keep their place
and the model's other code is untouched. For inference the update can be merged into the weight,
W = W0 + (alpha / r) B A, which costs nothing per token; `unmerge` restores W0 (up to rounding), and
`merge_lora` turns the model back into plain linear layers for export.

QLoRA (Dettmers et al., 2023) is LoRA over a base stored in 4-bit NF4 (peft/nf4.py): the wrapped
layer is an `NF4Linear`, dequantized at each call, while A and B stay in full precision. Merging
such an adapter gives a dense layer (the dequantized weight plus the update).
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.peft.nf4 import NF4Linear

LINEAR_TYPES = (nn.Linear, NF4Linear)  # what LoRA wraps: a plain layer, or an NF4 one (QLoRA)


class LoRALinear(nn.Module):
    """`base(x) + scaling * B(A(dropout(x)))` around a frozen linear layer (`nn.Linear` or
    `NF4Linear`); see the module docstring."""

    def __init__(
        self, base: nn.Linear | NF4Linear, rank: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if rank < 1:
            raise UserError(f"LoRA rank must be at least 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        weight = base.weight
        # over an NF4 base (QLoRA) the adapters stay in full precision, whatever the compute dtype
        dtype = torch.float32 if isinstance(base, NF4Linear) else weight.dtype
        like = {"dtype": dtype, "device": weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (W0, or W0 + the update while merged)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        if self.merged:
            return y
        update = self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()  # (..., r) -> (..., out)
        return y + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        """The update scaling * B A, (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: the same outputs, one product per call."""
        if isinstance(self.base, NF4Linear):  # 4 bits cannot hold the update: the merge is dense
            self.base = self.base.to_linear()
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again (training can go on)."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of a transformer block, in every family (no gate_proj without a gated MLP)."""


def matches(name: str, patterns: list[str]) -> bool:
    """True if the module name matches a pattern: a glob over the whole dotted name
    ("layers.*.attn.q_proj"), or over its trailing components ("q_proj", "attn.*_proj")."""
    return any(fnmatchcase(name, p) or fnmatchcase(name, f"*.{p}") for p in patterns)


def apply_lora(
    model: nn.Module,
    targets: list[str],
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> list[str]:
    """Wrap every `nn.Linear` of `model` whose name matches `targets` in a `LoRALinear` (in place);
    return the wrapped names. The wrapped base layers are frozen; the adapters are trainable."""
    if not targets:
        raise UserError("LoRA needs target modules (e.g. q_proj, v_proj)")
    chosen = [
        name
        for name, module in model.named_modules()
        if isinstance(module, LINEAR_TYPES) and matches(name, targets)
    ]
    if not chosen:
        linears = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}
        )
        raise UserError(
            f"LoRA target modules {targets} match no linear layer of the model; "
            f"its linear layers are named: {', '.join(linears)}"
        )
    shared = _shared_weights(model)
    for name in chosen:
        if model.get_submodule(name).weight.data_ptr() in shared:
            raise UserError(
                f"{name} shares its weight with another layer (tied embeddings): merging LoRA "
                "into it would change both; leave it out of the target modules"
            )
    wrappers = {
        name: LoRALinear(model.get_submodule(name), rank, alpha, dropout) for name in chosen
    }
    for name, wrapper in wrappers.items():  # all built first: a bad setting changes nothing
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrapper)
        wrapper.base.requires_grad_(False)
    return chosen


def _shared_weights(model: nn.Module) -> set[int]:
    """Addresses of the parameters that more than one module holds (tied weights)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            seen[p.data_ptr()] = seen.get(p.data_ptr(), 0) + 1
    return {ptr for ptr, count in seen.items() if count > 1}


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain `nn.Linear` back (in place): a
    model with no LoRA left, for export (convert, GGUF)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.base)
    return model
