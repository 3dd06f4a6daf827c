"""Model directories: `config.json` + `model.safetensors` (+ `tokenizer.json`).

Weights are only ever read from safetensors (never unpickled). Tied weights are stored once: the
output projection shares the embedding matrix, so `lm_head.weight` is left out of the file when
`tie_embeddings` is set. A run directory from `lmforge pretrain` is itself a model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import UserError
from lmforge.fileio import atomic_path, write_json_atomic
from lmforge.models.gpt import GPT, GPTConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """The state dict to save: contiguous CPU tensors, tied weights once."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
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


def load_model_state(model: GPT, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load `state` into `model`, naming any missing/unexpected/misshapen tensor."""
    expected = model.state_dict()
    optional = {"lm_head.weight"} if model.config.tie_embeddings else set()
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


def read_config(directory: Path) -> GPTConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a model directory: {CONFIG_FILE} not found")
    try:
        return GPTConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a valid model config: {e}") from None


def save_model(model: GPT, directory: str | Path, tokenizer=None) -> Path:
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
) -> GPT:
    """Build the model from `directory/config.json` and load its weights."""
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"model directory not found: {directory}")
    cfg = read_config(directory)
    state = load_safetensors(directory / WEIGHTS_FILE)
    with torch.device("meta"):
        model = GPT(cfg)
    model = model.to_empty(device="cpu")
    if cfg.position == "rope":  # non-persistent buffers are not in the file: rebuild them
        from lmforge.nn import RotaryEmbedding

        model.rotary = RotaryEmbedding(
            cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling
        )
    load_model_state(model, state, directory / WEIGHTS_FILE)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.to(device=device, dtype=dtype).eval()


def load_model_and_tokenizer(directory: str | Path, device: str | torch.device = "cpu"):
    """A model directory's model and tokenizer, checked against each other."""
    from lmforge.tokenizer import Tokenizer

    model = load_model(directory, device)
    tokenizer = Tokenizer.from_file(Path(directory))
    check_vocab(tokenizer, model.config, directory)
    return model, tokenizer


def check_vocab(tokenizer, cfg: GPTConfig, where: str | Path) -> None:
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(
            f"tokenizer in {where} has {tokenizer.vocab_size} tokens but the model has only "
            f"{cfg.vocab_size} embeddings: they do not belong together"
        )
