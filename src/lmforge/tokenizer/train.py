"""Train tokenizers: byte-level BPE (GPT-2 style), character-level (nanoGPT's shakespeare_char),
WordPiece (BERT) and Unigram (T5).

References:
- Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units" (BPE).
- Radford et al. 2019, GPT-2: BPE over *bytes*, so any text encodes without an unknown token.
- nanoGPT `data/shakespeare_char/prepare.py`: the char vocabulary is `sorted(set(text))`, ids 0..n-1.
- Schuster & Nakajima 2012 (WordPiece); Devlin et al. 2019, BERT: lower-cased text, split on
  whitespace and punctuation, continuation pieces marked `##`, specials [PAD] [UNK] [CLS] [SEP] [MASK].
- Kudo 2018, "Subword Regularization" (the Unigram language model); Kudo & Richardson 2018,
  SentencePiece: spaces become `▁` and belong to the next piece; Raffel et al. 2020, T5: `<pad>` = 0,
  `</s>` = 1, `<unk>` = 2, and 100 sentinels `<extra_id_N>` at the end of the vocabulary.

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

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
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
    _run_trainer(backend, trainer, texts_or_files, "BPE")
    return Tokenizer(backend)


def _run_trainer(
    backend: HFTokenizer,
    trainer,
    texts_or_files: Iterable[str] | Sequence[Path],
    kind: str,
) -> None:
    """Train `backend` on text strings, or on files (read by the Rust trainer, in parallel)."""
    items = iter(texts_or_files)
    first = next(items, None)
    if first is None:
        raise UserError(f"no training text was given to the {kind} trainer; pass text files")
    if isinstance(first, os.PathLike):
        files = [Path(first), *(Path(f) for f in items)]
        for f in files:
            check_text_file(f)
        try:
            backend.train([str(f) for f in files], trainer=trainer)
        except Exception as e:  # the Rust trainer raises plain `Exception`
            raise UserError(f"{kind} training failed to read its input files ({e})") from None
    else:
        backend.train_from_iterator(itertools.chain([first], items), trainer=trainer)


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


WORDPIECE_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""BERT's special tokens, ids 0-4 of a trained WordPiece tokenizer: padding, unknown, sequence start
(its hidden state feeds the pooler), separator (also between documents), masked position."""


def train_wordpiece(
    texts_or_files: Iterable[str] | Sequence[Path],
    vocab_size: int,
    special_tokens: Sequence[str] = WORDPIECE_SPECIAL_TOKENS,
    min_frequency: int = 2,
    lowercase: bool = True,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a BERT WordPiece tokenizer with `vocab_size` ids (special tokens first).

    Text is normalized as BERT's (clean control characters, split CJK characters, lower-case and
    strip accents when `lowercase`), split on whitespace and punctuation, and words are cut into
    the longest vocabulary pieces, continuations prefixed `##`; unknown words become [UNK]. The
    post-processor adds `[CLS] A [SEP]` (and `B [SEP]`) for `transformers`; lmforge's `encode` adds
    no special tokens. `texts_or_files` is as for `train_bpe`.
    """
    specials = list(special_tokens)
    if vocab_size <= len(specials):
        raise UserError(
            f"WordPiece vocab_size {vocab_size} is too small for {len(specials)} special tokens; "
            "raise vocab_size"
        )
    backend = HFTokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        show_progress=show_progress,
        continuing_subword_prefix="##",
    )
    _run_trainer(backend, trainer, texts_or_files, "WordPiece")
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    return Tokenizer(backend)


UNIGRAM_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
"""T5's special tokens, ids 0-2 of a trained Unigram tokenizer: padding (also the decoder's start
token), end of sequence (also between documents), unknown character."""


def train_unigram(
    texts_or_files: Iterable[str] | Sequence[Path],
    vocab_size: int,
    num_sentinels: int = 100,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a SentencePiece-style Unigram tokenizer of `vocab_size` ids (at most: the trainer may
    stop earlier on a small corpus) for T5: `<pad>` `</s>` `<unk>` first, the learned pieces, then
    `num_sentinels` sentinels with `<extra_id_0>` last, as in T5's vocabulary.

    The Metaspace pre-tokenizer turns each space into `▁` at the start of the next piece; there is
    no normalization, and `\n` is always a piece, so text (line breaks included) decodes back as
    it was, except characters the trainer never saw, which become `<unk>`. `</s>` is the eos token.
    `texts_or_files` is as for `train_bpe`.
    """
    specials = list(UNIGRAM_SPECIAL_TOKENS)
    learned = vocab_size - num_sentinels
    if num_sentinels < 0 or learned <= len(specials) + 1:
        raise UserError(
            f"Unigram vocab_size {vocab_size} is too small for {len(specials)} special tokens and "
            f"{num_sentinels} sentinels; raise vocab_size"
        )
    backend = HFTokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=learned,
        special_tokens=specials,
        unk_token="<unk>",
        initial_alphabet=["\n"],  # file lines arrive without their line breaks
        show_progress=show_progress,
    )
    _run_trainer(backend, trainer, texts_or_files, "Unigram")
    backend.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(num_sentinels))])
    return Tokenizer(backend, eos_token="</s>")
