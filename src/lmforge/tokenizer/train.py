"""Train tokenizers: byte-level BPE (GPT-2 style) and character-level (nanoGPT's shakespeare_char).

References:
- Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units" (BPE).
- Radford et al. 2019, GPT-2: BPE over *bytes*, so any text encodes without an unknown token.
- nanoGPT `data/shakespeare_char/prepare.py`: the char vocabulary is `sorted(set(text))`, ids 0..n-1.

Byte-level BPE reserves three special tokens by default: `<|endoftext|>` (document separator, the
end-of-sequence token) and `<|im_start|>` / `<|im_end|>` (ChatML turn markers), so a pre-trained
model can later be fine-tuned for chat without resizing its embedding table. The trainer puts
special tokens first (ids 0, 1, 2), then the 256 byte tokens, then the learned merges.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import UserError
from lmforge.fileio import check_text_file
from lmforge.tokenizer.core import CHAR_SPLIT_PATTERN, EOS_TOKEN, Tokenizer

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, "<|im_start|>", "<|im_end|>")
"""Special tokens of a trained BPE tokenizer: end of text, plus two reserved ChatML markers."""


def train_bpe(
    texts_or_files: Iterable[str] | Sequence[Path],
    vocab_size: int,
    special_tokens: Sequence[str] | None = None,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer with `vocab_size` ids (special tokens included).

    `texts_or_files` is either an iterable of text strings or a list of `Path`s to UTF-8 text files
    (fastest: the Rust trainer reads the files itself, in parallel).
    """
    specials = list(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    minimum = 256 + len(specials)
    if vocab_size < minimum:
        raise UserError(
            f"BPE vocab_size {vocab_size} is too small: byte-level BPE needs at least {minimum} "
            f"(256 byte tokens + {len(specials)} special tokens); raise vocab_size"
        )
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )

    items = iter(texts_or_files)
    first = next(items, None)
    if first is None:
        raise UserError("no training text was given to the BPE trainer; pass text files or strings")
    if isinstance(first, os.PathLike):
        files = [Path(first), *(Path(f) for f in items)]
        _check_files(files)
        try:
            backend.train([str(f) for f in files], trainer=trainer)
        except Exception as e:  # the Rust trainer raises plain `Exception`
            raise UserError(f"BPE training failed to read its input files ({e})") from None
    else:
        backend.train_from_iterator(itertools.chain([first], items), trainer=trainer)
    return Tokenizer(backend)


def _check_files(files: Sequence[Path]) -> None:

    for f in files:
        check_text_file(f)


def train_char(text: str, special_tokens: Sequence[str] = (EOS_TOKEN,)) -> Tokenizer:
    """A character-level tokenizer over the characters of `text`, ids in sorted character order.

    Special tokens get the ids after the characters; pass `special_tokens=()` for exactly
    nanoGPT's shakespeare_char vocabulary (65 ids for Tiny Shakespeare).
    """
    if not text:
        raise UserError(
            "cannot build a character tokenizer from empty text; pass a non-empty corpus"
        )
    chars = sorted(set(text))
    vocab = {c: i for i, c in enumerate(chars)}
    # No unknown token in the vocabulary: an unseen character is an error, never silently mapped.
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # No normalizer and no stripping: " ", "  " and "\n" must survive a round trip.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT_PATTERN), "isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(special_tokens))
    return Tokenizer(backend)
