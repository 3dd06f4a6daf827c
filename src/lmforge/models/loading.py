"""Model directories: `config.json` + `model.safetensors` (+ `tokenizer.json`).

Weights are only ever read from safetensors (never unpickled). Tied weights are stored once: the
output projection shares the embedding matrix, so `lm_head.weight` is left out of the file when
`tie_embeddings` is set. A run directory from `lmforge pretrain` is itself a model directory.

A model directory may also hold an adapter that cannot be merged into the weights (`adapter.json`
and `adapter.safetensors` of a Houlsby adapter or a soft prompt, from `lmforge finetune`):
`load_model` rebuilds it on the model (peft/adapter_files.py).

Every model family (models/registry.py) loads through the same code; `config.json` names the family.
A model class cooperates through three optional methods:
- `tied_parameter_names()`: names left out of the file because they share another's tensor;
- `tie_weights()`: re-ties them after loading;
- `reset_buffers()`: recomputes non-persistent buffers (such as rotary tables) that are not saved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import UserError
from lmforge.fileio import atomic_path, write_json_atomic
from lmforge.models import registry

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def tied_names(model: nn.Module) -> set[str]:
    """Parameter names that share another parameter's tensor and are not saved."""
    method = getattr(model, "tied_parameter_names", None)
    return set(method()) if method is not None else set()


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to save: contiguous CPU tensors, tied weights once."""
    state = model.state_dict()
    for name in tied_names(model):
        state.pop(name, None)
    return {k: _standalone(v.detach().to("cpu")) for k, v in state.items()}


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor with storage of its own (decoding groups some weights into one buffer,
    and safetensors refuses tensors that share memory)."""
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None):
    """Write a safetensors file atomically."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is corrupt or truncated ({reason}); re-create or re-download it"
        ) from None


def iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a safetensors file one at a time (only one is read into memory at once:
    peft/qlora.py quantizes each as it comes); a missing or corrupt file is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()
            for name in names:
                yield name, f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is corrupt or truncated ({reason}); re-create or re-download it"
        ) from None


def load_model_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: Path,
    optional: set[str] = frozenset(),
) -> None:
    """Load `state` into `model`, naming any missing/unexpected/misshapen tensor; the tensors
    named in `optional` (and tied ones) may be missing."""
    expected = model.state_dict()
    optional = tied_names(model) | set(optional)
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"{source} does not match its config.json: {what} tensors")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UserError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, config.json implies "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)


def read_config(directory: Path):
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a model directory: {CONFIG_FILE} not found")
    try:
        return registry.config_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not a valid model config: {e}") from None


def save_model(model: nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """Write config.json, model.safetensors and (if given) tokenizer.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    save_safetensors(model_state(model), directory / WEIGHTS_FILE, {"format": "pt"})
    write_json_atomic(directory / CONFIG_FILE, model.config.to_dict())
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def load_model(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """Build the model from `directory/config.json` and load its weights."""
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"model directory not found: {directory}")
    cfg = read_config(directory)
    state = load_safetensors(directory / WEIGHTS_FILE)
    model = build_loaded(cfg, state, directory / WEIGHTS_FILE)
    from lmforge.peft.adapter_files import rebuild_saved_adapter

    model = rebuild_saved_adapter(model, directory)  # a bottleneck adapter or a soft prompt
    return model.to(device=device, dtype=dtype).eval()


def build_loaded(cfg, state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """The model of `cfg` (any family) holding `state`, without a random initialisation first."""
    with torch.device("meta"):  # no initialisation: every weight comes from the state
        model = registry.build_model(cfg)
    model = model.to_empty(device="cpu")
    finish_loading(model)
    load_model_state(model, state, source)
    finish_loading(model)
    return model.eval()


def finish_loading(model: nn.Module) -> None:
    """Recompute unsaved buffers and re-tie shared weights after weights were put in place."""
    if hasattr(model, "reset_buffers"):
        model.reset_buffers()
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_model_and_tokenizer(directory: str | Path, device: str | torch.device = "cpu"):
    """A model directory's model and tokenizer, checked against each other."""
    from lmforge.tokenizer import Tokenizer

    model = load_model(directory, device)
    tokenizer = Tokenizer.from_file(Path(directory))
    check_vocab(tokenizer, model.config, directory)
    return model, tokenizer


def check_vocab(tokenizer, cfg, where: str | Path) -> None:
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(
            f"tokenizer in {where} has {tokenizer.vocab_size} tokens but the model has only "
            f"{cfg.vocab_size} embeddings: they do not belong together"
        )
