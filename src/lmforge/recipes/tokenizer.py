"""`lmforge tokenizer train`: train a byte-level BPE, character-level, WordPiece (BERT) or Unigram
(T5) tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.data.sources import resolve_text_inputs
from lmforge.errors import UserError
from lmforge.fileio import read_text_input
from lmforge.tokenizer import Tokenizer, train_bpe, train_char, train_unigram, train_wordpiece


@dataclass
class TokenizerTrainConfig:
    input: str
    """Text files, globs or an offline source name (e.g. shakespeare)."""
    out: str
    """Directory to write tokenizer.json into."""
    vocab_size: int = 4096
    """Vocabulary size of the BPE, WordPiece or Unigram (ignored for char)."""
    kind: str = "bpe"
    """bpe (byte-level BPE), char (one token per character), wordpiece (BERT's, with [CLS]
    [SEP] [MASK] [PAD] [UNK]) or unigram (T5's, with <pad> </s> <unk> and 100 sentinels)."""


def main(cfg: TokenizerTrainConfig) -> Tokenizer:
    files = resolve_text_inputs(cfg.input)
    if cfg.kind == "bpe":
        tokenizer = train_bpe(files, vocab_size=cfg.vocab_size)
    elif cfg.kind == "char":
        tokenizer = train_char("".join(read_text_input(f) for f in files))
    elif cfg.kind == "wordpiece":
        tokenizer = train_wordpiece(files, vocab_size=cfg.vocab_size)
    elif cfg.kind == "unigram":
        tokenizer = train_unigram(files, vocab_size=cfg.vocab_size)
    else:
        raise UserError(f"unknown tokenizer kind {cfg.kind!r}; use bpe, char, wordpiece or unigram")
    tokenizer.save(Path(cfg.out))
    print(
        f"trained a {cfg.kind} tokenizer of {tokenizer.vocab_size} tokens on {len(files)} "
        f"file(s) -> {Path(cfg.out) / 'tokenizer.json'}"
    )
    return tokenizer
