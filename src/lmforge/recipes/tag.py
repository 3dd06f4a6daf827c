"""`lmforge tag --model RUN --text ...`: tag the words of texts with a tagger from finetuning.

    lmforge tag --model runs/names-bert --text "Hamlet, the prince of Denmark, loves Ophelia."

prints one `word<TAB>tag` line per word (CoNLL style), a blank line between texts. From Python,
`load_tagger(RUN)` returns a `Tagger`: calling it on a text, a list of texts, or a list of
pre-split word lists gives, per text, a list of (word, tag) pairs. A text is split into words and
punctuation as the built-in data is (data/shakespeare_names.py `split_words`); words are tokenized, framed
and read at their first sub-word exactly as in fine-tuning. A text longer than the tagger's input
length is tagged in consecutive pieces that each fit, so every word gets a tag.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.classification import FRAMINGS, pad_right
from lmforge.data.shakespeare_names import split_words
from lmforge.data.tagging import OUTSIDE, EncodedWords, WordEncoder
from lmforge.device import resolve_device
from lmforge.errors import UserError
from lmforge.models.token_heads import TokenClassifier, load_token_classifier
from lmforge.tokenizer import Tokenizer


@dataclass
class TagConfig:
    model: str
    """Run directory of `lmforge finetune --task tag`."""
    texts: list[str]
    """Texts to tag."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""


class Tagger:
    """Words in, tags out: a `TokenClassifier` with its tokenizer, framing and input length."""

    def __init__(self, model: TokenClassifier, tokenizer: Tokenizer, max_length: int) -> None:
        self.model = model.eval()
        framing = FRAMINGS[model.family](tokenizer, model.backbone.config)
        self.encoder = WordEncoder(tokenizer, framing, min(max_length, model.max_length))
        self.pad_id = framing.pad_id
        self.device = next(model.parameters()).device

    def _pieces(self, words: Sequence[str]) -> list[EncodedWords]:
        """The sentence as consecutive encoded pieces, each holding as many words as fit."""
        pieces, start = [], 0
        while start < len(words):
            encoded = self.encoder.encode(words[start:])
            pieces.append(encoded)
            start += max(len(encoded.positions), 1)  # a word that cannot fit at all gets O
        return pieces

    @torch.no_grad()
    def tag_words(
        self, sentences: Sequence[Sequence[str]], batch_size: int = 64
    ) -> list[list[str]]:
        """The predicted tag of every word of each sentence."""
        pieces = [(i, p) for i, words in enumerate(sentences) for p in self._pieces(words)]
        tags: list[list[str]] = [[] for _ in sentences]
        names = self.model.tags
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            ids, mask = pad_right([p.ids for _, p in batch], self.pad_id)  # (B, T) each
            logits = self.model(ids.to(self.device), mask.to(self.device))  # (B, T, num_tags)
            best = logits.argmax(-1).cpu()  # (B, T)
            for b, (i, piece) in enumerate(batch):
                predicted = [names[int(t)] for t in best[b, piece.positions]]
                tags[i].extend(predicted or [OUTSIDE])
        return tags

    def __call__(
        self, texts: str | Sequence[str] | Sequence[Sequence[str]]
    ) -> list[list[tuple[str, str]]]:
        """(word, tag) pairs of each text; a text is a string (split by `split_words`) or a list
        of words."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        sentences = [split_words(t) if isinstance(t, str) else [str(w) for w in t] for t in texts]
        if not sentences or any(not s or any(not w.strip() for w in s) for s in sentences):
            raise UserError("give at least one text, and no empty ones (or empty words)")
        return [list(zip(s, t)) for s, t in zip(sentences, self.tag_words(sentences))]


def load_tagger(directory: str | Path, device: str | torch.device = "cpu") -> Tagger:
    """The tagger saved by `lmforge finetune --task tag` in `directory`."""
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"tagger not found: {directory}; pass a `lmforge finetune --task tag` run")
    model, info = load_token_classifier(directory, device)
    tokenizer = Tokenizer.from_file(directory)
    return Tagger(model, tokenizer, int(info.get("max_length", model.max_length)))


def main(cfg: TagConfig, out=None) -> list[list[tuple[str, str]]]:
    out = out or sys.stdout
    tagger = load_tagger(cfg.model, resolve_device(cfg.device))
    results = tagger(cfg.texts)
    for n, pairs in enumerate(results):
        if n:
            out.write("\n")
        out.writelines(f"{word}\t{tag}\n" for word, tag in pairs)
    out.flush()
    return results
