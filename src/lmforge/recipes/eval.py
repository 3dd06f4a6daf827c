"""`lmforge eval perplexity`: sliding-window perplexity and bits per byte of a model on text files.

Each file is one document (see `lmforge.eval.perplexity` for the method and the definitions). The
summary goes to stdout, the progress bar to stderr; `--json` prints one JSON object instead.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.sources import resolve_text_inputs, source_record
from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.eval.perplexity import PerplexityResult, perplexity
from lmforge.fileio import read_text_input
from lmforge.models import registry
from lmforge.models.loading import load_model_and_tokenizer


@dataclass
class PerplexityConfig:
    model: str
    """Model or run directory (config.json, model.safetensors, tokenizer.json)."""
    data: list[str] = field(default_factory=list)
    """Text files, globs, directories of *.txt, or an offline source name (e.g. hamlet)."""
    context: int | None = None
    """Window length in tokens (default: the model's max_seq_len)."""
    stride: int | None = None
    """Window step in tokens (default: context / 2; context = disjoint windows)."""
    batch_size: int | None = None
    """Windows per forward pass (default: about 4096 tokens per pass)."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    precision: str = "fp32"
    """fp32 (default: exact figures), auto, bf16 or fp16."""
    eos_prefix: bool = True
    """Put the end-of-text token before each document so its first token is scored too."""
    json: bool = False
    """Print one JSON object instead of the summary."""
    progress: bool = True
    """Show a progress bar on stderr."""


def perplexity_main(cfg: PerplexityConfig, out=None) -> PerplexityResult:
    out = out or sys.stdout
    model, tokenizer = load_model_and_tokenizer(cfg.model, resolve_device(cfg.device))
    family = registry.family_of(model).name
    if family != "gpt":
        raise UserError(f"perplexity needs a decoder (gpt) model; {cfg.model} is a {family} model")
    files = resolve_text_inputs(cfg.data)
    texts = [read_text_input(f) for f in files]
    result = perplexity(
        model,
        tokenizer,
        texts,
        context=cfg.context,
        stride=cfg.stride,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        precision=cfg.precision,
        eos_prefix=cfg.eos_prefix,
    )
    device = str(next(model.parameters()).device)
    if cfg.json:
        report = {
            "model": cfg.model,
            "files": [str(f) for f in files],
            "sources": _sources(files),
            "device": device,
            "precision": cfg.precision,
            **result.to_dict(),
        }
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(summary(result, cfg, files, device, model.num_params()))
    out.flush()
    return result


def _sources(files: list[Path]) -> list[dict]:
    """Name, package and licence of each offline source the files came from."""
    records = {}
    for f in files:
        record = source_record(f)
        if record:
            records[record["name"]] = {k: record.get(k) for k in ("name", "package", "licence")}
    return list(records.values())


def summary(
    r: PerplexityResult, cfg: PerplexityConfig, files: list[Path], device: str, params: int
) -> str:
    what = files[0].name if len(files) == 1 else f"{len(files)} files"
    sources = "".join(f", source {s['name']} ({s['licence']})" for s in _sources(files))
    return (
        f"model       {cfg.model} ({params / 1e6:.1f}M parameters)\n"
        f"data        {what}: {r.bytes:,} bytes, {r.documents} document(s){sources}\n"
        f"windows     context {r.context}, stride {r.stride}, {cfg.precision} on {device}\n"
        f"tokens      {r.tokens:,} scored in {r.seconds:.1f} s ({r.tokens_per_second:,.0f} tokens/s)\n"
        f"mean NLL    {r.mean_nll:.4f} nats/token\n"
        f"perplexity  {r.perplexity:.3f}\n"
        f"bits/token  {r.bits_per_token:.4f}\n"
        f"bits/byte   {r.bits_per_byte:.4f}\n"
    )
