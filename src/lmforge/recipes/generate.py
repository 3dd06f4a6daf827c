"""`lmforge generate`: continue one or more prompts with a trained model, streaming to stdout.

With `--chat` each prompt becomes one user message rendered with the model's chat template (and its
generation prompt), and generation stops at the template's end-of-turn token: the output is the
answer alone.

An encoder-decoder (t5) model reads each prompt as its source and prints the generated target
(text-to-text; infer/seq2seq.py), greedy, sampled or by beam search (`--num-beams`). So does a decoder
fine-tuned by `lmforge finetune --task text2text` (its run holds text2text.json): the prompt
("summarize: ...") is framed as in fine-tuning (tasks/text2text.py), only the target is printed.

`--adapter DIR` loads an adapter saved alone by `lmforge finetune` (LoRA, QLoRA, Houlsby adapter,
soft prompt; peft/adapter_files.py) onto the model, which must be the base it was trained on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from lmforge.data.text2text import read_text2text_info
from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.infer import SamplingParams, compile_decoding
from lmforge.infer.generate import stream_batch
from lmforge.models import registry
from lmforge.models.loading import load_model_and_tokenizer
from lmforge.peft import PromptTuned, load_adapter_merged
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
    num_beams: int = 1
    """Beam search with this many beams (encoder-decoder models); 1 = greedy or sampling."""
    length_penalty: float = 1.0
    """Beam search: a hypothesis scores log p / length^length_penalty."""
    adapter: str | None = None
    """A directory with adapter.json + adapter.safetensors (a `lmforge finetune` run of a
    parameter-efficient method) to load onto the model, which must be its base."""
    compile: bool = False
    """Decode with compiled steps (infer/compiled.py; decoder models)."""


def main(cfg: GenerateConfig, out=None) -> list[str]:
    out = out or sys.stdout
    if not cfg.prompts:
        raise UserError("give at least one --prompt")
    model, tokenizer = load_model_and_tokenizer(cfg.model, resolve_device(cfg.device))
    if cfg.adapter is not None:
        model = load_adapter_merged(model, cfg.adapter)  # a different base: one-line error
    if cfg.compile:
        if isinstance(model, PromptTuned):
            raise UserError("--compile does not support prompt-tuned models yet; leave it out")
        compile_decoding(model)  # decoders only: a clear error for the other families
    if registry.family_of(model).name == "t5":
        return text_to_text(cfg, model, tokenizer, out)
    framing = None if cfg.chat else read_text2text_info(cfg.model)
    if framing is not None:  # a decoder fine-tuned by `finetune --task text2text`
        return text_to_text(cfg, model, tokenizer, out, framing)
    if registry.family_of(model).name == "bert":
        raise UserError(f"{cfg.model} is a masked LM (bert): it fills in [MASK]s; use fill-mask")
    if cfg.num_beams != 1:
        raise UserError("beam search (--num-beams) is for encoder-decoder (t5) models")
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


def text_to_text(
    cfg: GenerateConfig, model, tokenizer, out, framing: dict | None = None
) -> list[str]:
    """An encoder-decoder's output for each prompt, cut at the first stop string; with `framing`
    (a text2text run's text2text.json), a decoder's, the prompt framed as in its fine-tuning."""
    from lmforge.infer.seq2seq import generate as seq2seq_generate

    if cfg.chat:
        raise UserError("--chat needs a decoder model with a chat template, not a t5 model")
    if framing is not None:
        from lmforge.tasks.text2text import generate_framed

        texts = generate_framed(
            model, tokenizer, cfg.prompts, cfg.sampling, framing, cfg.ignore_eos, cfg.num_beams
        )
    else:
        texts = seq2seq_generate(
            model,
            tokenizer,
            cfg.prompts,
            cfg.sampling,
            cfg.num_beams,
            cfg.length_penalty,
            cfg.ignore_eos,
        )
    for stop in filter(None, cfg.stop):
        texts = [t.split(stop, 1)[0] for t in texts]
    if len(texts) == 1:
        out.write(texts[0] + "\n")
    else:
        for i, (prompt, text) in enumerate(zip(cfg.prompts, texts)):
            out.write(f"--- [{i}] ---\n> {prompt}\n{text}\n")
    out.flush()
    return texts
