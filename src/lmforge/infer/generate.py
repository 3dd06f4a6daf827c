"""Text in, text out: tokenization, stop strings and streaming around the engine.

    from lmforge.infer import generate, SamplingParams
    text = generate(model, tokenizer, "ROMEO:", SamplingParams(temperature=0.8, top_p=0.95))

A sequence ends at the tokenizer's end-of-text token, at any of `stop_token_ids` (a chat model's
end-of-turn token), at any of the `stop` strings (which are cut from the output), or after
`max_new_tokens`. Streaming yields text as soon as it can no longer turn into a stop string and
no longer ends in a partial UTF-8 character.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from torch import nn

from lmforge.infer.engine import Engine
from lmforge.infer.sampling import SamplingParams


class _TextState:
    """Decoded text of one sequence, how much of it was emitted, and whether it has ended."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.ids: list[int] = []
        self.stop = [s for s in stop if s]
        self.emitted = 0
        self.done = False
        self.text = ""

    def add(self, tokenizer, token: int | None, stop_ids: set[int]) -> str:
        """Add a token; return the newly safe text."""
        if self.done:
            return ""
        if token is None or token in stop_ids:
            self.done = True
            return self._flush(self.text)
        self.ids.append(token)
        self.text = tokenizer.decode(self.ids)
        cut = min((i for s in self.stop if (i := self.text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.done = True
            self.text = self.text[:cut]
            return self._flush(self.text)
        safe = len(self.text.rstrip("\ufffd"))  # a multi-byte character still incomplete
        for s in self.stop:  # hold back a suffix that may grow into a stop string
            for k in range(min(len(s) - 1, safe), 0, -1):
                if self.text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        return self._flush(self.text[:safe])

    def _flush(self, upto: str) -> str:
        new = upto[self.emitted :]
        self.emitted = max(self.emitted, len(upto))
        return new

    def finish(self) -> str:
        self.done = True
        return self._flush(self.text)


def _stop_ids(tokenizer, ignore_eos: bool, extra: Iterable[int] = ()) -> set[int]:
    eos = getattr(tokenizer, "eos_id", None)
    return set(extra) | (set() if ignore_eos or eos is None else {eos})


def stream_batch(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | list[int]],
    params: SamplingParams | None = None,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    stop_token_ids: Iterable[int] = (),
) -> Iterator[list[str]]:
    """Yield, per step, the new text of every prompt (empty strings for nothing new). A prompt is
    text, or the token ids of text already encoded."""
    params = params or SamplingParams()
    ids = [p if isinstance(p, list) else tokenizer.encode(p) for p in prompts]
    stop_ids = _stop_ids(tokenizer, ignore_eos, stop_token_ids)
    states = [_TextState(stop) for _ in prompts]
    steps = Engine(model).generate(ids, params, stop_ids)
    for step in steps:
        yield [s.add(tokenizer, t, stop_ids) for s, t in zip(states, step)]
        if all(s.done for s in states):
            steps.close()
            return
    yield [s.finish() for s in states]


def stream(
    model: nn.Module,
    tokenizer,
    prompt: str,
    params: SamplingParams | None = None,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    stop_token_ids: Iterable[int] = (),
) -> Iterator[str]:
    """Yield the continuation of one prompt piece by piece."""
    batches = stream_batch(model, tokenizer, [prompt], params, stop, ignore_eos, stop_token_ids)
    for pieces in batches:
        if pieces[0]:
            yield pieces[0]


def generate(
    model: nn.Module,
    tokenizer,
    prompts: str | Sequence[str | list[int]],
    params: SamplingParams | None = None,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    stop_token_ids: Iterable[int] = (),
) -> str | list[str]:
    """The continuation of a prompt (str) or of several prompts, batched (a list of texts or of
    token-id lists)."""
    single = isinstance(prompts, str)
    batch = [prompts] if single else list(prompts)
    texts = ["" for _ in batch]
    for pieces in stream_batch(model, tokenizer, batch, params, stop, ignore_eos, stop_token_ids):
        texts = [t + p for t, p in zip(texts, pieces)]
    return texts[0] if single else texts
