"""`lmforge prepare`: tokenize text into memory-mapped train/validation token shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.data.shards import prepare
from lmforge.data.sources import resolve_text_inputs
from lmforge.tokenizer import load_tokenizer


@dataclass
class PrepareConfig:
    input: str
    """Text files, globs or an offline source name (e.g. shakespeare)."""
    tokenizer: str
    """A tokenizer directory / tokenizer.json, or `gpt2`."""
    out: str
    """Data directory to write train.bin, val.bin and meta.json into."""
    val_fraction: float = 0.1
    """Share of the token stream (its end) held out for validation."""


def main(cfg: PrepareConfig) -> dict:
    files = resolve_text_inputs(cfg.input)
    tokenizer = load_tokenizer(cfg.tokenizer)
    meta = prepare(files, tokenizer, Path(cfg.out), val_fraction=cfg.val_fraction)
    counts = meta.get("tokens", meta)
    print(f"wrote {cfg.out}: {counts}")
    return meta
