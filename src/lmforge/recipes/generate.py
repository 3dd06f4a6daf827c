"""`lmforge generate`: continue one or more prompts with a trained model, streaming to stdout.

With `--chat` each prompt becomes one user message rendered with the model's chat template (and its
generation prompt), and generation stops at the template's end-of-turn token: the output is the
answer alone.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.infer import SamplingParams
from lmforge.infer.generate import stream_batch
from lmforge.models.loading import load_model_and_tokenizer
from lmforge.tokenizer.chat import get_chat_template


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
    chat: bool = False
    """Treat each prompt as a user message in the model's chat template; stop at end-of-turn."""


def main(cfg: GenerateConfig, out=None) -> list[str]:
    out = out or sys.stdout
    if not cfg.prompts:
        raise UserError("give at least one --prompt")
    model, tokenizer = load_model_and_tokenizer(cfg.model, resolve_device(cfg.device))
    prompts, stop, stop_ids = cfg.prompts, list(cfg.stop), set()
    if cfg.chat:
        template = get_chat_template(tokenizer)
        prompts = [template.render([{"role": "user", "content": p}], True) for p in cfg.prompts]
        stop += template.stop_strings
        stop_ids = set() if cfg.ignore_eos else template.stop_token_ids
    texts = ["" for _ in cfg.prompts]
    streaming = len(cfg.prompts) == 1
    if streaming and not cfg.chat:
        out.write(cfg.prompts[0])
        out.flush()
    batches = stream_batch(
        model, tokenizer, prompts, cfg.sampling, stop, cfg.ignore_eos, stop_token_ids=stop_ids
    )
    for pieces in batches:
        texts = [t + p for t, p in zip(texts, pieces)]
        if streaming and pieces[0]:
            out.write(pieces[0])
            out.flush()
    if streaming:
        out.write("\n")
    else:
        for i, (prompt, text) in enumerate(zip(cfg.prompts, texts)):
            shown = f"> {prompt}\n{text}" if cfg.chat else prompt + text
            out.write(f"--- [{i}] ---\n{shown}\n")
    out.flush()
    return texts
