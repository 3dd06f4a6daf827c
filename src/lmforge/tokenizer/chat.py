"""Chat templates: conversations → text → token ids, with a mask of the assistant's tokens.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`.
A chat template is Jinja source that turns it into the text the model was trained on; with
`add_generation_prompt=True` it ends with the header of the next assistant turn, so the model
continues with the answer. Rendering follows `transformers` (`apply_chat_template`, see
https://huggingface.co/docs/transformers/chat_templating): a sandboxed, immutable Jinja environment
with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter, the
globals `raise_exception` and `strftime_now`, the variables `messages`, `add_generation_prompt`,
`bos_token`, `eos_token`, and a `{% generation %}` block (rendered as its body).

Templates (`get_chat_template`):
- the model's own (`tokenizer.chat_template`, from `chat_template.jinja` or GGUF metadata);
- `chatml`: ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`), what our BPE tokenizers reserve
  their special tokens for;
- `plain`: "User: ...\\nAssistant: ...<|endoftext|>\\n" for tokenizers without ChatML markers (the
  character tokenizer); with no end-of-text token either, a turn ends at the end of its line;
- `default`: ChatML when the tokenizer has `<|im_start|>` and `<|im_end|>`, else plain.

The end of an assistant turn is found by rendering a probe conversation and reading what the
template writes right after the answer: a special token (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...),
or a newline. Generation stops there (and at end-of-text).

The assistant mask (for instruction fine-tuning, where only the answers are trained on) works for
any template: for each assistant message i, the text of messages[:i] with the generation prompt
and the text of messages[:i+1] must both be prefixes of the whole conversation's text; the
characters between them, cut just after the end-of-turn marker, are the answer. Each piece is
tokenized on its own, so no token straddles a boundary; mask 1 covers the answer and its end-of-turn
token, 0 covers system and user turns, the assistant header and whatever follows the end-of-turn
token (ChatML's newline). A template that rewrites earlier turns (not prefix-stable) is an error.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.errors import UserError
from lmforge.tokenizer.core import EOS_TOKEN, Tokenizer

Message = Mapping[str, str]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as used by SmolLM2 and Qwen (without their default system prompts)."""

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)
"""Plain text for tokenizers without ChatML markers; `eos_token` ends an answer when there is one."""

BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE, "plain": PLAIN_TEMPLATE}
TEMPLATE_NAMES = ("auto", "model", "default", *BUILTIN_TEMPLATES)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")

# Extra stop strings of the plain template: a model that was never taught to end its turn tends to
# start the next one.
_EXTRA_STOPS = {PLAIN_TEMPLATE: ("\nUser:",)}
_PROBE_QUESTION = "lmforge probe question"
_PROBE_ANSWER = "lmforge probe answer"


# ------------------------------------------------------------------------------------- rendering
class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant marker), rendered as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _TemplateRaised(jinja2.TemplateError):
    """Raised by `raise_exception(...)` inside a template."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """`tojson` as transformers defines it: plain `json.dumps`, no HTML escaping."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(
            f"chat template has a syntax error ({_one_line(e)}, line {e.lineno}); fix the template "
            "or choose another (--template chatml)"
        ) from None


def render_chat(
    messages: Sequence[Message],
    template: str,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    **variables,
) -> str:
    """Render `messages` with the Jinja chat template source `template`.

    A template that fails (syntax error, `raise_exception`, an undefined variable, a sandbox
    violation) raises a one-line `UserError`.
    """
    _check_messages(messages)
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **variables,
        )
    except _TemplateRaised as e:
        reason = " ".join(str(e).split())
        raise UserError(f"chat template refused the conversation: {reason}") from None
    except Exception as e:  # any failure inside user-supplied Jinja is bad input
        raise UserError(
            f"chat template failed to render ({_one_line(e)}); fix the template or choose "
            "another (--template chatml)"
        ) from None


def _check_messages(messages: Sequence[Message]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise UserError("a conversation is a list of {'role': ..., 'content': ...} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise UserError(f"message {i} of the conversation has no 'role'; got {m!r:.80}")


# ------------------------------------------------------------------------------- template lookup
def default_chat_template(tokenizer: Tokenizer) -> str:
    """ChatML when the tokenizer has ChatML's special tokens, else the plain-text template."""
    has_chatml = all(tokenizer.token_to_id(t) is not None for t in CHATML_TOKENS)
    return CHATML_TEMPLATE if has_chatml else PLAIN_TEMPLATE


def template_source(tokenizer: Tokenizer, spec: str | Path | None = None) -> str:
    """The Jinja source that `spec` names.

    `spec`: None or "auto" (the model's own template, else the default), "model", "default",
    "chatml", "plain", Jinja source (anything with `{{` or `{%`), or the path of a `.jinja` file.
    """
    spec = "auto" if spec is None else spec
    if isinstance(spec, str) and spec in TEMPLATE_NAMES:
        if spec in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[spec]
        if spec == "default" or (spec == "auto" and not tokenizer.chat_template):
            return default_chat_template(tokenizer)
        if not tokenizer.chat_template:
            raise UserError(
                "this model has no chat template of its own; use --template default, chatml or "
                "plain, or a .jinja file"
            )
        return tokenizer.chat_template
    if isinstance(spec, str) and ("{{" in spec or "{%" in spec):
        return spec
    path = Path(spec)
    if not path.is_file():
        raise UserError(
            f"unknown chat template {str(spec)!r}: pass {', '.join(TEMPLATE_NAMES)}, "
            "a .jinja file or Jinja source"
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read chat template {path} ({e})") from None


def get_chat_template(tokenizer: Tokenizer, spec: str | Path | None = None) -> ChatTemplate:
    """The chat template `spec` names (see `template_source`), bound to `tokenizer`."""
    return ChatTemplate(template_source(tokenizer, spec), tokenizer)


def apply_chat_template(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    add_generation_prompt: bool = False,
    template: str | Path | None = None,
) -> str:
    """Render `messages` with the tokenizer's template (or `template`), like `transformers`."""
    return get_chat_template(tokenizer, template).render(messages, add_generation_prompt)


# ---------------------------------------------------------------------------------- the template
@dataclass(frozen=True)
class ChatTokens:
    """A tokenized conversation: `ids`, and `assistant_mask` (1 on the assistant's tokens)."""

    ids: list[int]
    assistant_mask: list[int]


class ChatTemplate:
    """A Jinja chat template bound to a tokenizer: render, encode, tokenize with a mask, stop."""

    def __init__(self, source: str, tokenizer: Tokenizer) -> None:
        self.source = source
        self.tokenizer = tokenizer
        self.bos_token, self.eos_token = _bos_eos(tokenizer)
        _compile(source)  # a syntax error surfaces now, not at the first message
        self.end_of_turn = self._find_end_of_turn()
        """What the template writes right after an answer: special tokens, or "\\n", or ()."""

    def render(
        self, messages: Sequence[Message], add_generation_prompt: bool = False, **variables
    ) -> str:
        """The text of `messages`; with `add_generation_prompt`, ready for the assistant's answer."""
        return render_chat(
            messages,
            self.source,
            add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **variables,
        )

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered conversation (by default ready for the answer)."""
        return self.tokenizer.encode(self.render(messages, add_generation_prompt))

    # ------------------------------------------------------------------------------- stopping
    @property
    def stop_token_ids(self) -> set[int]:
        """Token ids that end an assistant turn: the end-of-turn special tokens and end-of-text."""
        names = [t for t in self.end_of_turn if t != "\n"] + [self.eos_token, EOS_TOKEN]
        ids = {self.tokenizer.token_to_id(t) for t in names if t}
        return {i for i in ids if i is not None}

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end an assistant turn (the newline rule, or the plain template's)."""
        stops = ["\n"] if "\n" in self.end_of_turn else []
        return stops + list(_EXTRA_STOPS.get(self.source, ()))

    def _find_end_of_turn(self) -> tuple[str, ...]:
        probe = [
            {"role": "user", "content": _PROBE_QUESTION},
            {"role": "assistant", "content": _PROBE_ANSWER},
        ]
        text = self.render(probe)
        at = text.rfind(_PROBE_ANSWER)
        if at < 0:
            return ()
        tail = text[at + len(_PROBE_ANSWER) :]
        for token in sorted(self.tokenizer.special_tokens, key=len, reverse=True):
            if tail.startswith(token):
                return (token,)
        return ("\n",) if tail.startswith("\n") else ()

    # ---------------------------------------------------------------------------- assistant mask
    def assistant_spans(self, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
        """The conversation's text and the (start, end) character span of every answer, each
        ending just after its end-of-turn marker."""
        full = self.render(messages)
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(before)):
                raise UserError(
                    f"chat template is not prefix-stable at message {i}: it renders earlier turns "
                    "differently as the conversation grows, so the assistant's tokens cannot be "
                    "located; use a template that leaves earlier turns unchanged (e.g. chatml)"
                )
            if before == self.render(messages[:i]):
                raise UserError(
                    "chat template ignores add_generation_prompt, so the assistant header cannot "
                    "be told apart from the answer; use a template with a generation prompt"
                )
            start, end = len(before), self._cut_after_end_of_turn(upto, len(before))
            if spans and start < spans[-1][1]:
                raise UserError(f"chat template renders message {i} over the previous answer")
            spans.append((start, end))
        return full, spans

    def _cut_after_end_of_turn(self, text: str, start: int) -> int:
        found = [(text.rfind(t, start), t) for t in self.end_of_turn]
        return max((at + len(t) for at, t in found if at >= 0), default=len(text))

    def tokenize(self, messages: Sequence[Message]) -> ChatTokens:
        """Token ids of the whole conversation and the mask of the assistant's tokens."""
        full, spans = self.assistant_spans(messages)
        ids: list[int] = []
        mask: list[int] = []
        position = 0
        for start, end in [*spans, (len(full), len(full))]:
            for a, b, flag in ((position, start, 0), (start, end, 1)):
                piece = self.tokenizer.encode(full[a:b]) if b > a else []
                ids += piece
                mask += [flag] * len(piece)
            position = end
        return ChatTokens(ids, mask)


def _bos_eos(tokenizer: Tokenizer) -> tuple[str, str]:
    """The `bos_token` and `eos_token` template variables: the tokenizer's own names when it has
    them (a converted model), else `<|endoftext|>` as end of sequence when it exists."""
    bos = getattr(tokenizer, "bos_token", None)
    eos = getattr(tokenizer, "eos_token", None)
    if eos is None and tokenizer.token_to_id(EOS_TOKEN) is not None:
        eos = EOS_TOKEN
    return bos or "", eos or ""
