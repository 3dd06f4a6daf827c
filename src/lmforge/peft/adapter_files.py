"""Adapters saved alone, and loaded back onto the base model they were trained on.

A directory holds
    adapter.safetensors   the adapters' own tensors (LoRA: each wrapped layer's lora_A, lora_B)
    adapter.json          the method and its settings, the wrapped layers, and the base model's
                          fingerprint
A few MiB instead of the whole model. Loading checks the fingerprint first: adapters trained on one
model mean nothing on another of the same shape, so a different base is refused, not silently used.

The fingerprint is a SHA-256 over every base tensor's name, dtype, shape and an evenly strided
sample of about a thousand of its values: cheap on a model of any size (no full pass over the
weights), and it still tells apart two models that differ anywhere a training run would change
them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.fileio import write_json_atomic
from lmforge.models.loading import load_model_state, load_safetensors, model_state, save_safetensors
from lmforge.peft.lora import LoRALinear, apply_lora, lora_layers

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
SAMPLES_PER_TENSOR = 1024


def split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The adapters' tensors, and the state of the base model under them, named as the plain
    model names it."""
    if any(layer.merged for layer in lora_layers(model)):
        raise ValueError("unmerge the adapters before reading the base weights")
    adapters, base = {}, {}
    for name, tensor in model_state(model).items():
        if ".lora_" in name:
            adapters[name] = tensor
        else:
            base[name.replace(".base.", ".")] = tensor
    return adapters, base


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the names, dtypes, shapes and a strided sample of values of `state`."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        flat = tensor.reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLES_PER_TENSOR)]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(sample.float().numpy().tobytes())
    return digest.hexdigest()


def save_adapter(model: nn.Module, directory: str | Path, settings: dict) -> Path:
    """Write the LoRA adapters of `model` (unmerged) and `settings` (rank, alpha, dropout,
    targets, anything worth keeping) with the base's fingerprint into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not wrapped:
        raise ValueError("the model has no adapters to save")
    tensors, base = split_state(model)
    info = {"method": "lora", **settings, "wrapped": wrapped, "base_fingerprint": fingerprint(base)}
    save_safetensors(tensors, directory / ADAPTER_WEIGHTS, {"format": "pt"})
    write_json_atomic(directory / ADAPTER_CONFIG, info)
    return directory


def read_adapter_info(directory: str | Path) -> dict:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise UserError(f"{directory} holds no adapter: {ADAPTER_CONFIG} not found")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        for key in ("method", "rank", "alpha", "wrapped", "base_fingerprint"):
            info[key]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a valid adapter config ({type(e).__name__}: {e})") from None
    if info["method"] != "lora":
        raise UserError(f"{path}: unknown adapter method {info['method']!r}")
    return info


def load_adapter(model: nn.Module, directory: str | Path) -> dict:
    """Wrap `model` (the base the adapter was trained on) with the saved adapters, in place;
    return the adapter's info. A different base model is a `UserError`."""
    directory = Path(directory)
    info = read_adapter_info(directory)
    if fingerprint(split_state(model)[1]) != info["base_fingerprint"]:
        raise UserError(
            f"the adapter in {directory} was trained on a different base model "
            f"({info.get('base_model', 'unknown')}): fingerprints differ"
        )
    targets = list(info["wrapped"])
    wrapped = apply_lora(model, targets, info["rank"], info["alpha"], info.get("dropout", 0.0))
    if sorted(wrapped) != sorted(targets):
        raise UserError(f"{directory}: the adapter's layers do not match the model's")
    path = directory / ADAPTER_WEIGHTS
    base_names = {k for k in model.state_dict() if ".lora_" not in k}
    load_model_state(model, load_safetensors(path), path, optional=base_names)
    return info
