"""Adapters saved alone, and loaded back onto the base model they were trained on: one format and
one code path for every kind (LoRA and QLoRA, Houlsby bottleneck adapters, prompt tuning).

A directory holds
    adapter.safetensors   the adapter's own tensors (LoRA: lora_A, lora_B of each wrapped layer;
                          bottleneck adapters: their down and up projections; prompt tuning: the
                          soft prompt), and the base tensors it trained too (the layer norms of
                          Houlsby adapters)
    adapter.json          the method and its settings, the wrapped modules, the trained base
                          tensors it carries (`carried`) and the base model's fingerprint
A few MiB instead of the whole model.

Every adapter module wraps what it adapts and keeps it as its child `base` (`LoRALinear`,
`WithAdapter`, `PromptTuned` and its `PromptEmbedding`), so an adapted model's tensors are named
as the plain model's with `.base` inserted at each wrapper, and the adapter's own tensors are the
others: `split_state` tells them apart for every kind.

Kinds (`KINDS`) say how to rebuild an adapter from adapter.json and whether it can be merged:
- lora, qlora: merged. W + (alpha / r) B A is one matrix, so a fine-tuning run saves its model
  merged (a plain model every command loads), and the adapter beside it for `convert --adapter`
  and `generate --adapter` onto the base.
- adapter (Houlsby), prompt: cannot be folded into the weights (a nonlinearity between the
  projections; extra positions in the sequence). As Hugging Face PEFT does for prompt learning, the
  adapted model keeps its modules: a run saves the base weights with the adapter beside them and
  `load_model` rebuilds it (models/loading.py, `rebuild_saved_adapter`); the lmforge format thus
  carries them, and export to Hugging Face or GGUF, which have no place for them, is refused
  (recipes/convert.py).

Loading checks the fingerprint first: adapters trained on one model mean nothing on another of the
same shape, so a different base is refused, not silently used. The fingerprint is a SHA-256 over
every base tensor's name, dtype, shape and an evenly strided sample of about a thousand of its
values (cheap on a model of any size, and it still tells apart two models that differ anywhere a
training run would change them), in name order, leaving out the tensors the adapter carries. For
QLoRA it is taken of the weights as read, before NF4 quantization changed them (peft/qlora.py keeps
their signatures in `source_signatures`), so its adapter loads onto the plain base the user gave.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.fileio import write_json_atomic
from lmforge.models.loading import load_model_state, load_safetensors, model_state, save_safetensors
from lmforge.peft.bottleneck import NORM_TYPES, WithAdapter, apply_adapters
from lmforge.peft.lora import LoRALinear, apply_lora, lora_layers, merge_lora
from lmforge.peft.prompt import PromptEmbedding, PromptTuned, require_decoder

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
SAMPLES_PER_TENSOR = 1024
WRAPPERS = (LoRALinear, WithAdapter, PromptTuned, PromptEmbedding)
"""Modules that wrap what they adapt as their child `base`."""


@dataclass(frozen=True)
class AdapterKind:
    wrapper: type[nn.Module]
    """The module that wraps each adapted module; adapter.json lists their names (`wrapped`)."""
    settings: tuple[str, ...]
    """The adapter.json keys `rebuild` reads."""
    rebuild: Callable[[nn.Module, dict], nn.Module]
    """(the plain base, adapter.json) -> the base with fresh adapters where the saved ones were."""
    mergeable: bool
    """It folds into the weights: a fine-tuning run saves its model merged."""
    carried: Callable[[nn.Module, dict], list[str]] = lambda model, settings: []
    """(the adapted model, its settings) -> the base tensors trained with the adapter, which
    travel in adapter.safetensors (Houlsby's layer norms)."""


def _rebuild_lora(model: nn.Module, info: dict) -> nn.Module:
    apply_lora(model, list(info["wrapped"]), info["rank"], info["alpha"], info.get("dropout", 0.0))
    return model


def _rebuild_bottleneck(model: nn.Module, info: dict) -> nn.Module:
    apply_adapters(model, list(info["wrapped"]), int(info["bottleneck"]))
    return model


def _trained_norms(model: nn.Module, settings: dict) -> list[str]:
    """The layer norms' parameters, if the adapter trained them (`train_norms`)."""
    if not settings.get("train_norms"):
        return []
    wrappers = wrapper_paths(model)
    return sorted(
        base_name(f"{name}.{p}", wrappers)
        for name, module in model.named_modules()
        if isinstance(module, NORM_TYPES)
        for p, _ in module.named_parameters(recurse=False)
    )


def _rebuild_prompt(model: nn.Module, info: dict) -> nn.Module:
    require_decoder(model)
    like = model.embed_tokens.weight  # the values come from adapter.safetensors
    return PromptTuned(model, like.new_zeros(int(info["num_tokens"]), like.size(1)))


_LORA = AdapterKind(LoRALinear, ("rank", "alpha"), _rebuild_lora, mergeable=True)
KINDS: dict[str, AdapterKind] = {
    "lora": _LORA,
    "qlora": _LORA,  # LoRA trained over an NF4 base; it loads onto the plain base
    "adapter": AdapterKind(
        WithAdapter, ("bottleneck",), _rebuild_bottleneck, False, carried=_trained_norms
    ),
    "prompt": AdapterKind(PromptTuned, ("num_tokens",), _rebuild_prompt, mergeable=False),
}
"""Method name (adapter.json `method`) -> how its adapter is rebuilt."""


# ------------------------------------------------------------------------------ state names
def wrapper_paths(model: nn.Module) -> set[str]:
    """Names of the adapter wrappers in `model` ("" for the model itself)."""
    return {name for name, module in model.named_modules() if isinstance(module, WRAPPERS)}


def base_name(name: str, wrappers: set[str]) -> str | None:
    """The plain model's name of tensor `name` of an adapted model (its `.base` steps left out),
    or None for a tensor of the adapter's own."""
    kept, path = [], ""
    for part in name.split("."):
        if path in wrappers:
            if part != "base":
                return None
        else:
            kept.append(part)
        path = f"{path}.{part}" if path else part
    return ".".join(kept)


def split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The adapters' own tensors (named as in `model`), and the state of the base model under
    them (named as the plain model names it)."""
    if any(layer.merged for layer in lora_layers(model)):
        raise ValueError("unmerge the adapters before reading the base weights")
    wrappers = wrapper_paths(model)
    adapters, base = {}, {}
    for name, tensor in model_state(model).items():
        plain = base_name(name, wrappers)
        if plain is None:
            adapters[name] = tensor
        else:
            base[plain] = tensor
    return adapters, base


# ------------------------------------------------------------------------------ fingerprint
def tensor_signature(name: str, tensor: torch.Tensor) -> bytes:
    """What the fingerprint hashes of one tensor: name, dtype, shape, a strided sample."""
    tensor = tensor.detach().cpu().contiguous()
    flat = tensor.reshape(-1)
    sample = flat[:: max(1, flat.numel() // SAMPLES_PER_TENSOR)]
    header = f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode()
    return header + sample.float().numpy().tobytes()


def combine(signatures: dict[str, bytes]) -> str:
    """SHA-256 (hex) of the signatures in name order."""
    digest = hashlib.sha256()
    for name in sorted(signatures):
        digest.update(signatures[name])
    return digest.hexdigest()


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the names, dtypes, shapes and a strided sample of values of `state`."""
    return combine({name: tensor_signature(name, t) for name, t in state.items()})


def base_fingerprint(model: nn.Module, base: dict[str, torch.Tensor], carried) -> str:
    """The fingerprint of the base under `model` (`base`: `split_state`'s), or of the weights it
    was read from if loading changed them (`source_signatures`, peft/qlora.py), without the
    tensors `carried` by the adapter."""
    signatures = getattr(model, "source_signatures", None)
    if signatures is None:
        signatures = {n: tensor_signature(n, t) for n, t in base.items()}
    return combine({n: s for n, s in signatures.items() if n not in set(carried)})


# ------------------------------------------------------------------------------- save, load
def save_adapter(
    model: nn.Module, directory: str | Path, settings: dict, method: str = "lora"
) -> Path:
    """Write the adapters of `model` (unmerged), the base tensors trained with them (Houlsby's
    layer norms, with `train_norms`) and `method`, `settings` (rank, bottleneck, ..., anything
    worth keeping) with the base's fingerprint into `directory`."""
    kind = KINDS[method]
    directory = Path(directory)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, kind.wrapper)]
    if not wrapped:
        raise ValueError(f"the model has no {method} adapters to save")
    tensors, base = split_state(model)
    carried = kind.carried(model, settings)
    tensors.update({name: base[name] for name in carried})
    info = {
        "method": method,
        **settings,
        "wrapped": wrapped,
        "carried": carried,
        "base_fingerprint": base_fingerprint(model, base, carried),
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, directory / ADAPTER_WEIGHTS, {"format": "pt"})
    write_json_atomic(directory / ADAPTER_CONFIG, info)
    return directory


def read_adapter_info(directory: str | Path) -> dict:
    """adapter.json of `directory`, checked (a `UserError` if missing or malformed)."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise UserError(f"{directory} holds no adapter: {ADAPTER_CONFIG} not found")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        method = info["method"]
        if method not in KINDS:
            raise UserError(f"{path}: unknown adapter method {method!r}")
        for key in ("wrapped", "base_fingerprint", *KINDS[method].settings):
            info[key]
        list(info.get("carried", []))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a valid adapter config ({type(e).__name__}: {e})") from None
    return info


def load_adapter(model: nn.Module, directory: str | Path) -> tuple[nn.Module, dict]:
    """`model` (the base the adapter was trained on) with the saved adapter, and the adapter's
    info. In place where the adapter wraps modules inside the model; prompt tuning returns a
    wrapper around it. A different base model is a `UserError`, and leaves `model` unchanged."""
    directory = Path(directory)
    info = read_adapter_info(directory)
    kind = KINDS[info["method"]]
    if wrapper_paths(model):
        raise UserError(f"the model already carries an adapter; load {directory} onto its base")
    carried = list(info.get("carried", []))
    if base_fingerprint(model, split_state(model)[1], carried) != info["base_fingerprint"]:
        raise UserError(
            f"the adapter in {directory} was trained on a different base model "
            f"({info.get('base_model', 'unknown')}): fingerprints differ"
        )
    adapted = kind.rebuild(model, info)
    wrapped = [name for name, m in adapted.named_modules() if isinstance(m, kind.wrapper)]
    if sorted(wrapped) != sorted(info["wrapped"]):
        raise UserError(f"{directory}: the adapter's layers do not match the model's")
    path = directory / ADAPTER_WEIGHTS
    own = set(split_state(adapted)[0]) | set(carried)
    optional = set(adapted.state_dict()) - own
    load_model_state(adapted, load_safetensors(path), path, optional=optional)
    return adapted, info


def rebuild_saved_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """`model` with the adapter saved beside its weights in `directory`, if that adapter cannot
    be merged (adapter, prompt); a mergeable one (LoRA) is already in a run's weights."""
    if not (Path(directory) / ADAPTER_CONFIG).is_file():
        return model
    if KINDS[read_adapter_info(directory)["method"]].mergeable:
        return model
    return load_adapter(model, directory)[0]


def remove_adapters(model: nn.Module) -> nn.Module:
    """Put every wrapped module back in its wrapper's place (in place; a wrapper around the whole
    model returns what it wraps): the plain base, without the adapters (LoRA unmerged)."""
    for name in sorted(wrapper_paths(model), key=len, reverse=True):  # innermost first
        module = model.get_submodule(name)
        if name == "":
            return module.base
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.base)
    return model


def has_unmergeable_adapter(model: nn.Module) -> bool:
    """True if `model` carries an adapter that cannot be folded into its weights."""
    return any(isinstance(m, (WithAdapter, PromptTuned)) for m in model.modules())


def load_adapter_merged(model: nn.Module, directory: str | Path) -> nn.Module:
    """`model` with the adapter of `directory`, merged into its weights where it can be (LoRA:
    the same outputs at no extra cost per token): for generation and chat."""
    model, info = load_adapter(model, directory)
    return merge_lora(model) if KINDS[info["method"]].mergeable else model
