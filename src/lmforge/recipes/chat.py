"""`lmforge chat`: a multi-turn chat with a model in the terminal, streaming its answers.

One line of input is one user message. Commands: `/reset` forgets the history, `/system TEXT` sets
the system message (`/system` alone removes it), `/exit` (or end of input) quits. Ctrl-C during an
answer stops that answer and keeps the session; Ctrl-C at the prompt quits. Input may be piped
(`printf 'Hi\\n/reset\\nHello\\n' | lmforge chat --model DIR`): answers go to stdout, one per line
group, and notices to stderr. The session itself is `lmforge.infer.chat.ChatSession`.
`--adapter DIR` loads an adapter from `lmforge finetune` onto the model, its base
(peft/adapter_files.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.infer.chat import ChatSession
from lmforge.infer.compiled import compile_decoding
from lmforge.infer.sampling import SamplingParams
from lmforge.models import registry
from lmforge.models.loading import load_model_and_tokenizer
from lmforge.peft import PromptTuned, load_adapter_merged

HELP = "commands: /reset (forget the history), /system TEXT (set the system message), /exit"


@dataclass
class ChatConfig:
    model: str
    """Model or run directory (config.json, model.safetensors, tokenizer.json)."""
    system: str | None = None
    """System message at the start of the conversation."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    template: str | None = None
    """Chat template: None (the model's own, else the default), chatml, plain, or a .jinja file."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    adapter: str | None = None
    """A directory with adapter.json + adapter.safetensors (a `lmforge finetune` run of a
    parameter-efficient method) to load onto the model, which must be its base."""
    compile: bool = False
    """Decode with compiled steps (infer/compiled.py): slow first answer, faster ones after."""


def main(
    cfg: ChatConfig,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> ChatSession:
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    model, tokenizer = load_model_and_tokenizer(cfg.model, resolve_device(cfg.device))
    if cfg.adapter is not None:
        model = load_adapter_merged(model, cfg.adapter)  # a different base: one-line error
    family = registry.family_of(model).name
    if family != "gpt":
        raise UserError(f"chat needs a decoder (gpt) model; {cfg.model} is a {family} model")
    if cfg.compile:
        if isinstance(model, PromptTuned):
            raise UserError("--compile does not support prompt-tuned models yet; leave it out")
        compile_decoding(model)
    session = ChatSession(model, tokenizer, cfg.template, cfg.sampling, cfg.system)
    interactive = stdin is sys.stdin and stdin.isatty()
    if interactive:
        err.write(f"chat with {cfg.model}; {HELP}; Ctrl-C stops an answer\n")
    while True:
        try:
            line = _read_line(stdin, interactive)
        except KeyboardInterrupt:  # Ctrl-C at the prompt quits
            out.write("\n")
            break
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if not _command(session, text, err):
                break
            continue
        _answer(session, text, out, err)
        if interactive:
            out.write("\n")
    out.flush()
    return session


def _read_line(stdin: TextIO, interactive: bool) -> str | None:
    """The next line of input, or None at end of input."""
    if interactive:
        try:
            return input("> ")  # line editing and history through `readline`
        except EOFError:
            return None
    line = stdin.readline()
    return line if line else None


def _command(session: ChatSession, text: str, err: TextIO) -> bool:
    """Run a /command; False means quit."""
    name, _, arg = text.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        err.write("(history cleared)\n")
    elif name == "/system":
        session.set_system(arg.strip())
        err.write("(system message set)\n" if session.system else "(system message removed)\n")
    elif name == "/help":
        err.write(HELP + "\n")
    else:
        err.write(f"unknown command {name}; {HELP}\n")
    return True


def _answer(session: ChatSession, text: str, out: TextIO, err: TextIO) -> None:
    """Stream the answer to `text`; Ctrl-C stops it, a message too long for the context is
    reported and the session goes on."""
    dropped = session.dropped
    pieces = session.stream(text)
    try:
        for piece in pieces:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        pieces.close()
        out.write("\n")
        err.write("(answer interrupted)\n")
        return
    except UserError as e:
        err.write(f"error: {e}\n")
        return
    out.write("\n")
    out.flush()
    if session.dropped > dropped:
        err.write(f"(dropped the {session.dropped - dropped} oldest messages to fit the context)\n")
