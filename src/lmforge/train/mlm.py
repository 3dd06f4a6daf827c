"""Masked-language-model objective (Devlin et al., 2019, BERT, section 3.1 "Task #1: Masked LM").

Each token window x (B, T) from the data is framed as one sequence, [CLS] x_1 .. x_{T-2} [SEP], so
it fits the model's positions. Of its non-special tokens, a share p = 0.15 is selected for
prediction: exactly round(p * n) per sequence (at least one), as BERT's create_pretraining_data.py
does. A selected token is replaced by

    [MASK]          with probability 0.8
    a random token  with probability 0.1   (uniform over the non-special vocabulary)
    itself          with probability 0.1

and the loss is the mean cross-entropy of the original tokens at the selected positions only,

    L = -1/|M| sum_{i in M} log p(x_i | x~),   M = the selected positions, x~ = the corrupted input.

Whole-word masking (the later BERT release): words, not tokens, are selected (p of them), and a
word's WordPiece continuation pieces (`##ing`) go with its first piece.

Randomness: during training the global torch RNG (the training loop saves and restores it with
each checkpoint, so a resumed run masks as the uninterrupted one would); in evaluation
(`model.training` is False) a generator seeded from the batch content, so the validation loss is
a deterministic function of the weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import UserError

MASK_SHARE = 0.8
"""Share of the selected tokens replaced by [MASK]."""
RANDOM_SHARE = 0.1
"""Share of the selected tokens replaced by a random token (the rest stay unchanged)."""
CONTINUATION_PREFIX = "##"
"""WordPiece marks a piece that continues the previous one with this prefix."""


@dataclass
class MaskingVocab:
    """The token ids masking needs, with per-vocabulary lookup tables."""

    cls_id: int
    sep_id: int
    mask_id: int
    is_special: torch.Tensor
    """(V,) bool: never selected (special tokens: [CLS], [SEP], [PAD], [UNK], [MASK], ...)."""
    is_continuation: torch.Tensor
    """(V,) bool: a WordPiece continuation piece (`##...`)."""
    _by_device: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> MaskingVocab:
        """The ids of a WordPiece tokenizer; a `UserError` when it lacks [MASK], [CLS] or [SEP]."""
        fix = "train a WordPiece tokenizer (lmforge tokenizer train --kind wordpiece)"
        tokenizer.require_ids(("[MASK]",), fix)  # named alone: a BPE tokenizer lacks all three
        ids = tokenizer.require_ids(("[CLS]", "[SEP]", "[MASK]"), fix)
        V = tokenizer.vocab_size
        is_special = torch.zeros(V, dtype=torch.bool)
        specials = [tokenizer.token_to_id(t) for t in tokenizer.special_tokens]
        is_special[[i for i in (*specials, *ids.values()) if i is not None]] = True
        tokens = [tokenizer.id_to_token(i) or "" for i in range(V)]
        is_continuation = torch.tensor([t.startswith(CONTINUATION_PREFIX) for t in tokens])
        if bool(is_special.all()):
            raise UserError("tokenizer has only special tokens; train it on some text")
        return cls(ids["[CLS]"], ids["[SEP]"], ids["[MASK]"], is_special, is_continuation)

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(is_special, is_continuation, ordinary ids) on `device`, copied there once."""
        if device not in self._by_device:
            ordinary = (~self.is_special).nonzero().squeeze(1)  # (R,) ids a random token is from
            self._by_device[device] = tuple(
                t.to(device) for t in (self.is_special, self.is_continuation, ordinary)
            )
        return self._by_device[device]


def frame(x: torch.Tensor, cls_id: int, sep_id: int) -> torch.Tensor:
    """[CLS] x[:, :T-2] [SEP] for token windows x (B, T): the same shape as x."""
    B = x.size(0)
    cls = x.new_full((B, 1), cls_id)
    sep = x.new_full((B, 1), sep_id)
    return torch.cat([cls, x[:, : x.size(1) - 2], sep], dim=1)  # (B, T)


def select_tokens(
    eligible: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean (B, T): exactly round(p * n) of each row's n eligible positions (at least one),
    uniformly at random (the first k of a random order of the candidates)."""
    scores = torch.rand(eligible.shape, generator=generator, device=eligible.device)
    scores = scores.masked_fill(~eligible, 2.0)  # ineligible positions sort last
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, T): place of each position in that order
    n = eligible.sum(dim=1, keepdim=True)  # (B, 1)
    k = torch.minimum((n * probability).round().clamp(min=1), n)  # (B, 1)
    return rank < k


def select_whole_words(
    eligible: torch.Tensor,
    continuation: torch.Tensor,
    probability: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean (B, T): round(p * words) whole words per row, each with all its pieces.

    A word starts at an eligible token that is not a continuation, or whose previous token is not
    eligible (a window can start inside a word); its continuation pieces follow it.
    """
    B, T = eligible.shape
    previous_eligible = F.pad(eligible[:, :-1], (1, 0), value=False)  # (B, T)
    starts = eligible & (~continuation | ~previous_eligible)
    chosen = select_tokens(starts, probability, generator)  # words, by their first piece
    position = torch.arange(T, device=eligible.device).expand(B, T)
    word_start = torch.where(starts, position, 0).cummax(dim=1).values  # (B, T)
    return chosen.gather(1, word_start) & eligible


def corrupt(
    ids: torch.Tensor,
    selected: torch.Tensor,
    mask_id: int,
    ordinary_ids: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The input with selected tokens replaced: 80% [MASK], 10% a random ordinary token, 10% kept."""
    r = torch.rand(ids.shape, generator=generator, device=ids.device)
    pick = torch.randint(len(ordinary_ids), ids.shape, generator=generator, device=ids.device)
    out = torch.where(selected & (r < MASK_SHARE), mask_id, ids)
    is_random = selected & (r >= MASK_SHARE) & (r < MASK_SHARE + RANDOM_SHARE)
    return torch.where(is_random, ordinary_ids[pick], out)


def mask_tokens(
    ids: torch.Tensor,
    vocab: MaskingVocab,
    probability: float = 0.15,
    whole_word: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted input, selected positions), both (B, T), for framed token ids (B, T)."""
    is_special, is_continuation, ordinary = vocab.tables(ids.device)
    eligible = ~is_special[ids]  # (B, T)
    if whole_word:
        selected = select_whole_words(eligible, is_continuation[ids], probability, generator)
    else:
        selected = select_tokens(eligible, probability, generator)
    return corrupt(ids, selected, vocab.mask_id, ordinary, generator), selected


def content_generator(ids: torch.Tensor) -> torch.Generator:
    """A generator on the device of `ids`, seeded from their values (same batch, same masks)."""
    digest = hashlib.sha256(ids.detach().cpu().numpy().tobytes()).digest()
    seed = int.from_bytes(digest[:8], "little") & (2**63 - 1)
    return torch.Generator(device=ids.device).manual_seed(seed)


def mlm_loss(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    vocab: MaskingVocab,
    probability: float = 0.15,
    whole_word: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy over the selected positions of the framed, masked windows of batch[0]
    (batch[1], the next-token targets, is not used)."""
    x, _ = batch
    ids = frame(x, vocab.cls_id, vocab.sep_id)  # (B, T)
    generator = None if model.training else content_generator(ids)
    inputs, selected = mask_tokens(ids, vocab, probability, whole_word, generator)
    logits = model(inputs, select=selected)  # (N, V)
    loss = F.cross_entropy(logits.float(), ids[selected], reduction="sum")
    return loss / selected.sum().clamp(min=1)


def build_mlm_objective(tokenizer, model_config, train_config):
    """The `mlm` objective bound to the tokenizer's special tokens and the run's options."""
    if train_config.block_size < 3:
        raise UserError("train.block_size must be at least 3 for mlm: [CLS], tokens, [SEP]")
    vocab = MaskingVocab.from_tokenizer(tokenizer)
    return partial(
        mlm_loss,
        vocab=vocab,
        probability=train_config.mlm_probability,
        whole_word=train_config.whole_word_mask,
    )
