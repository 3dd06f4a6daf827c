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
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import UserError
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
    """A directory with adapter.safetensors + adapter.json (a `finetune --method lora` run): loaded
    onto the source, which must be its base, and merged into the written model."""


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
    if cfg.adapter is not None:
        from lmforge.peft import load_adapter, merge_lora

        load_adapter(model, cfg.adapter)
        merge_lora(model)
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


def main(cfg: ConvertConfig) -> None:
    convert(cfg)
