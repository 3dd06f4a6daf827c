"""`lmforge convert SRC --out DST [--to lmforge|hf|gguf] [--dtype ...]`: move a model between formats.

The source format is detected, never declared:
- a file starting with the bytes `GGUF` is a GGUF file (llama.cpp; `interop/gguf.py`);
- a directory whose `config.json` names an lmforge family (`"family": "gpt"`) is an lmforge model
  directory (`models/loading.py`);
- any other directory with a `config.json` is a Hugging Face directory (`interop/hf.py`).

Every format goes through the same in-memory pair (`GPT` in fp32, `Tokenizer`), so each reader and
writer is written once. Storage types per target:

    lmforge   fp32 (default), bf16, f16   safetensors; loaded back in fp32
    hf        fp32 (default), bf16, f16   safetensors that `transformers` loads
    gguf      f32 (default), f16, q8_0    llama.cpp types; norms stay f32

Adapters (`--adapter DIR`, a `lmforge finetune` run or any directory with adapter.json and
adapter.safetensors; peft/adapter_files.py) are loaded onto the source, which must be their base.
LoRA and QLoRA adapters are merged into the weights: a plain model in any format. Houlsby adapters
and soft prompts cannot be merged (a nonlinearity; extra input positions), so they go only to the
lmforge format, which keeps them beside the base weights for `load_model` to rebuild (in fp32:
the adapter's fingerprint holds the base's exact weights); to Hugging Face or GGUF, which have no
place for them, the conversion is refused. A run directory that carries such an adapter converts
the same way.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import UserError
from lmforge.fileio import write_json_atomic
from lmforge.models import registry

TARGET_DTYPES = {
    "lmforge": ("fp32", "bf16", "f16"),
    "hf": ("fp32", "bf16", "f16"),
    "gguf": ("f32", "f16", "q8_0"),
}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
GGUF_MAGIC = b"GGUF"


@dataclass
class ConvertConfig:
    source: str
    """A GGUF file, a Hugging Face directory or an lmforge model directory."""
    out: str
    """Output directory (lmforge, hf) or file (gguf)."""
    to: str = "lmforge"
    """Target format: lmforge, hf or gguf."""
    dtype: str | None = None
    """Storage type (see the module docstring); default fp32 / f32."""
    adapter: str | None = None
    """A directory with adapter.safetensors + adapter.json (a `lmforge finetune` run with a
    parameter-efficient method): loaded onto the source, which must be its base, and merged into
    the written model (LoRA, QLoRA) or written beside it (adapter, prompt; lmforge format only)."""


def detect_format(source: Path) -> str:
    """`gguf`, `lmforge` or `hf`, from the file's magic bytes or the directory's config.json."""
    if not source.exists():
        raise UserError(f"model not found: {source}; pass a GGUF file or a model directory")
    if source.is_file():
        with open(source, "rb") as f:
            if f.read(4) == GGUF_MAGIC:
                return "gguf"
        raise UserError(
            f"{source} is not a GGUF file (no GGUF magic bytes); pass a .gguf file or a directory "
            "with config.json"
        )
    config = source / "config.json"
    if not config.is_file():
        raise UserError(
            f"{source} has no config.json: it is neither a Hugging Face nor an lmforge model "
            "directory"
        )
    try:
        family = json.loads(config.read_text(encoding="utf-8")).get("family")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise UserError(f"{config} is not valid JSON ({e}); re-create or re-download it") from None
    return "lmforge" if family is not None else "hf"


def load_any(source: str | Path):
    """(model, tokenizer or None, format) from any supported source."""
    source = Path(source)
    fmt = detect_format(source)
    if fmt == "gguf":
        from lmforge.interop.gguf import load_gguf

        model, tokenizer = load_gguf(source)
    elif fmt == "hf":
        from lmforge.interop.hf import load_hf

        model, tokenizer = load_hf(source)
    else:
        from lmforge.models.loading import load_model
        from lmforge.tokenizer import Tokenizer

        model = load_model(source)
        has_tokenizer = (source / "tokenizer.json").is_file()
        tokenizer = Tokenizer.from_file(source) if has_tokenizer else None
    return model, tokenizer, fmt


def convert(cfg: ConvertConfig) -> Path:
    """Read `cfg.source`, write it as `cfg.to`; return the written path."""
    if cfg.to not in TARGET_DTYPES:
        raise UserError(f"unknown target format {cfg.to!r}; choose one of {list(TARGET_DTYPES)}")
    dtype = cfg.dtype or TARGET_DTYPES[cfg.to][0]
    if dtype in ("fp32", "f32"):  # both spellings name full precision
        dtype = TARGET_DTYPES[cfg.to][0]
    if dtype not in TARGET_DTYPES[cfg.to]:
        raise UserError(
            f"--dtype {dtype} is not available for --to {cfg.to}; choose one of "
            f"{', '.join(TARGET_DTYPES[cfg.to])}"
        )
    out = Path(cfg.out)
    if out.resolve() == Path(cfg.source).resolve():
        raise UserError("--out must differ from the source: converting in place could lose it")
    model, tokenizer, fmt = load_any(cfg.source)
    adapter = cfg.adapter
    if adapter is not None:
        from lmforge.peft import load_adapter

        model, _ = load_adapter(model, adapter)
    elif fmt == "lmforge" and (Path(cfg.source) / "adapter.json").is_file():
        from lmforge.peft.adapter_files import has_unmergeable_adapter

        if has_unmergeable_adapter(model):  # rebuilt by load_model: it goes along
            adapter = cfg.source
    if adapter is not None:
        model = merge_or_keep_adapter(model, Path(adapter), cfg.to, dtype, out)
    if cfg.to == "gguf":
        if tokenizer is None:
            raise UserError(f"{cfg.source} has no tokenizer.json: a GGUF file must carry one")
        family = registry.family_of(model).name
        if family != "gpt":
            raise UserError(f"GGUF export takes decoder (gpt) models; {cfg.source} is a {family}")
        from lmforge.interop.gguf import save_gguf

        save_gguf(model, tokenizer, out, dtype=dtype)
    elif cfg.to == "hf":
        from lmforge.interop.hf import save_hf

        save_hf(model, tokenizer, out, dtype=TORCH_DTYPES[dtype])
    else:
        from lmforge.models.loading import save_model

        save_model(model.to(TORCH_DTYPES[dtype]), out, tokenizer)
    print(
        f"converted {fmt} {cfg.source} -> {cfg.to} {out} ({dtype}, "
        f"{model.num_params() / 1e6:.1f}M parameters)",
        file=sys.stderr,
    )
    return out


def merge_or_keep_adapter(model, adapter: Path, to: str, dtype: str, out: Path):
    """The model to write, with the adapter of `adapter` loaded on it: merged into the weights
    (LoRA, QLoRA), or (adapter, prompt) taken off, its files written into `out` for `load_model`
    to rebuild; refused where the target format cannot carry it."""
    from lmforge.models.loading import load_safetensors, save_safetensors
    from lmforge.peft.adapter_files import (
        ADAPTER_CONFIG,
        ADAPTER_WEIGHTS,
        KINDS,
        read_adapter_info,
        remove_adapters,
    )
    from lmforge.peft.lora import merge_lora

    info = read_adapter_info(adapter)
    method = info["method"]
    if KINDS[method].mergeable:
        return merge_lora(model)
    why = {
        "adapter": "a nonlinearity sits between its projections",
        "prompt": "it adds virtual tokens before the input",
    }[method]
    if to != "lmforge":
        raise UserError(
            f"{adapter} holds a {method} adapter, which cannot be merged into the weights ({why}) "
            f"and {to} has no place for it; convert to the lmforge format, which keeps it beside "
            "the base, or export the base alone"
        )
    if dtype != "fp32":
        raise UserError(
            f"{adapter} holds a {method} adapter, which stays beside the base's exact weights "
            "(its fingerprint): convert with --dtype fp32"
        )
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(load_safetensors(adapter / ADAPTER_WEIGHTS), out / ADAPTER_WEIGHTS)
    write_json_atomic(out / ADAPTER_CONFIG, info)
    return remove_adapters(model)


def main(cfg: ConvertConfig) -> None:
    convert(cfg)
