"""`lmforge generate`: continue one or more prompts with a trained model, streaming to stdout."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.infer import SamplingParams
from lmforge.infer.generate import stream_batch
from lmforge.models.loading import load_model_and_tokenizer


@dataclass
class GenerateConfig:
    model: str
    """Model or run directory (config.json, model.safetensors, tokenizer.json)."""
    prompts: list[str]
    """Prompts; several are generated together in one batch."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    """Strings that end a continuation (not included in the output)."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    ignore_eos: bool = False
    """Keep generating past the end-of-text token."""


def main(cfg: GenerateConfig, out=None) -> list[str]:
    out = out or sys.stdout
    if not cfg.prompts:
        raise UserError("give at least one --prompt")
    model, tokenizer = load_model_and_tokenizer(cfg.model, resolve_device(cfg.device))
    texts = ["" for _ in cfg.prompts]
    streaming = len(cfg.prompts) == 1
    if streaming:
        out.write(cfg.prompts[0])
        out.flush()
    for pieces in stream_batch(
        model, tokenizer, cfg.prompts, cfg.sampling, cfg.stop, cfg.ignore_eos
    ):
        texts = [t + p for t, p in zip(texts, pieces)]
        if streaming and pieces[0]:
            out.write(pieces[0])
            out.flush()
    if streaming:
        out.write("\n")
    else:
        for i, (prompt, text) in enumerate(zip(cfg.prompts, texts)):
            out.write(f"--- [{i}] ---\n{prompt}{text}\n")
    out.flush()
    return texts
