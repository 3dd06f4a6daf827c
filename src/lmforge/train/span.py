"""Span corruption: T5's pre-training objective (Raffel et al., 2020, section 3.1.4).

In each window of T tokens, round(0.15 T) "noise" tokens are dropped in round(noise / 3) spans.
The input keeps the other tokens with each dropped span replaced by one sentinel token
(`<extra_id_0>`, `<extra_id_1>`, ...), then EOS; the target is each sentinel followed by the span
it replaced, then EOS (the paper's Figure 2):

    original  Thank you for inviting me to your party last week .
    input     Thank you <X0> me to your party <X1> week . </s>
    target    <X0> for inviting <X1> last </s>

The noise mask is the T5 codebase's `random_spans_noise_mask` (t5/data/preprocessors.py): the
counts of noise tokens and spans are fixed by the length, spans alternate non-noise / noise starting
with non-noise, and every mask with those counts is equally likely (span lengths come from a random
segmentation: shuffled boundaries). Because the counts depend only on T, every window of a batch
gives inputs and targets of the same lengths: no padding.

The loss is the mean cross-entropy over target tokens (`seq2seq_loss`; labels of -100 do not
count). Randomness: the global torch RNG in training (saved in checkpoints and restored on resume by
train/loop.py); in evaluation (`not model.training`) a generator seeded from the batch's tokens, so
validation sees the same corruption every time.

A sentinel that also occurs in the data as ordinary text would make targets ambiguous: the
objective refuses such data (`check_data`, called by `lmforge pretrain` before training).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import UserError
from lmforge.train.fused_ce import linear_cross_entropy

SENTINEL = "<extra_id_{}>"
"""Sentinel token names (T5's): <extra_id_0> replaces the first dropped span, and so on."""


def noise_counts(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window of `length` tokens, as the reference computes them."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, num_spans


def _random_segmentation(
    batch: int, num_items: int, num_segments: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Lengths (batch, num_segments) of a uniformly random split of num_items into non-empty
    segments: num_segments - 1 segment starts shuffled among the num_items - 1 inner positions."""
    order = torch.rand(batch, num_items - 1, generator=generator).argsort(dim=1)
    is_start = order < num_segments - 1  # (batch, num_items - 1), num_segments - 1 True per row
    first_in_segment = F.pad(is_start.long(), (1, 0))  # (batch, num_items)
    segment_id = first_in_segment.cumsum(dim=1)  # (batch, num_items), in [0, num_segments)
    lengths = torch.zeros(batch, num_segments, dtype=torch.long)
    return lengths.scatter_add_(1, segment_id, torch.ones_like(segment_id))


def random_spans_noise_mask(
    batch: int,
    length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean (batch, length), True for noise tokens (drawn on the CPU)."""
    if length < 2:
        raise ValueError(f"span corruption needs windows of at least 2 tokens, got {length}")
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    if num_spans > length - num_noise:
        raise ValueError(
            f"{num_spans} noise spans need as many kept tokens between them, but a window of "
            f"{length} keeps only {length - num_noise}; lower the noise density"
        )
    noise_lengths = _random_segmentation(batch, num_noise, num_spans, generator)
    kept_lengths = _random_segmentation(batch, length - num_noise, num_spans, generator)
    interleaved = torch.stack([kept_lengths, noise_lengths], dim=2).view(batch, 2 * num_spans)
    span_starts = interleaved.cumsum(dim=1)[:, :-1]  # (batch, 2 * spans - 1)
    is_start = torch.zeros(batch, length, dtype=torch.long)
    is_start.scatter_add_(1, span_starts, torch.ones_like(span_starts))
    return is_start.cumsum(dim=1) % 2 == 1  # odd spans are noise


def _replace_spans(tokens: torch.Tensor, mask: torch.Tensor, sentinels: torch.Tensor):
    """T5's `noise_span_to_unique_sentinel`: each run of True in `mask` becomes one sentinel (the
    k-th run sentinels[k]); all other tokens stay. Rows must keep equally many tokens."""
    previous = F.pad(mask[:, :-1], (1, 0))  # (B, T): the token before was masked too
    first = mask & ~previous
    run = (first.cumsum(dim=1) - 1).clamp(min=0)  # (B, T): index of the current run
    replaced = torch.where(first, sentinels[run], tokens)
    keep = ~(mask & previous)
    return replaced[keep].view(tokens.size(0), -1)  # (B, kept)


def span_corrupt(
    tokens: torch.Tensor, noise_mask: torch.Tensor, sentinels: torch.Tensor, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of token windows (B, T) for a noise mask (B, T) from
    `random_spans_noise_mask`; sentinels: 1-D ids, <extra_id_0> first. Both end with EOS."""
    sentinels = sentinels.to(tokens.device)
    noise_mask = noise_mask.to(tokens.device)
    eos = torch.full_like(tokens[:, :1], eos_id)  # (B, 1)
    inputs = torch.cat([_replace_spans(tokens, noise_mask, sentinels), eos], dim=1)
    targets = torch.cat([_replace_spans(tokens, ~noise_mask, sentinels), eos], dim=1)
    return inputs, targets


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def seq2seq_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of an encoder-decoder predicting `labels` (B, T; -100 = padding, not
    counted) from `input_ids` (B, S), teacher-forced on the labels shifted right."""
    core = _unwrap(model)
    decoder_input_ids = core.shift_right(labels)  # (B, T)
    hidden = model(input_ids, attention_mask, decoder_input_ids, return_hidden=True)  # (B, T, C)
    return linear_cross_entropy(hidden, core.lm_head.weight, labels)


def _content_generator(tokens: torch.Tensor) -> torch.Generator:
    """A generator seeded from the tokens themselves: the same batch, the same corruption."""
    seed = zlib.crc32(tokens.detach().cpu().numpy().tobytes())
    return torch.Generator().manual_seed(seed)


class SpanCorruption:
    """The `span` objective: loss = objective(model, (x, y)) on token windows x (B, T)."""

    def __init__(
        self,
        sentinel_ids: list[int],
        eos_id: int,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
    ) -> None:
        self.sentinels = torch.tensor(sentinel_ids, dtype=torch.long)
        self.eos_id = eos_id
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length

    def corrupt(
        self, tokens: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of windows (B, T), with a fresh noise mask."""
        B, T = tokens.shape
        noise = random_spans_noise_mask(
            B, T, self.noise_density, self.mean_noise_span_length, generator
        )
        return span_corrupt(tokens, noise, self.sentinels, self.eos_id)

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, _ = batch  # the shifted y of causal LM is not used
        generator = None if model.training else _content_generator(x)
        inputs, targets = self.corrupt(x, generator)
        return seq2seq_loss(model, inputs, targets)

    def check_data(self, data, chunk: int = 1 << 24) -> None:
        """Refuse token data that holds a sentinel as ordinary text (a sentinel collision)."""
        ids = self.sentinels.numpy()
        for split in ("train", "val"):
            tokens = data.split(split)
            for start in range(0, len(tokens), chunk):
                found = np.isin(np.asarray(tokens[start : start + chunk]), ids)
                if found.any():
                    token_id = int(tokens[start + int(found.argmax())])
                    k = int(np.flatnonzero(ids == token_id)[0])
                    raise UserError(
                        f"sentinel collision: the {split} data contains {SENTINEL.format(k)} "
                        f"(id {token_id}) as ordinary text, but span corruption reserves it to mark "
                        "dropped spans; remove it from the corpus and run `lmforge prepare` again"
                    )


def sentinel_ids(tokenizer) -> list[int]:
    """Ids of <extra_id_0>, <extra_id_1>, ... for as long as the tokenizer has them."""
    ids = []
    while (token_id := tokenizer.token_to_id(SENTINEL.format(len(ids)))) is not None:
        ids.append(token_id)
    return ids


def build_span_objective(tokenizer, model_config, train_config) -> SpanCorruption:
    """The `span` objective bound to the tokenizer's sentinels and EOS and the run's options."""
    sentinels = sentinel_ids(tokenizer)
    if not sentinels:
        raise UserError(
            "span corruption needs sentinel tokens (<extra_id_0>, <extra_id_1>, ...) but the "
            "tokenizer has none; train one with `lmforge tokenizer train --kind unigram`"
        )
    eos_id = tokenizer.eos_id
    if eos_id is None:
        raise UserError("span corruption needs an end-of-sequence token; the tokenizer has none")
    density, mean_length = train_config.noise_density, train_config.mean_noise_span_length
    T = train_config.block_size
    _, num_spans = noise_counts(T, density, mean_length)
    if num_spans > len(sentinels):
        raise UserError(
            f"a block of {T} tokens gets {num_spans} noise spans but the tokenizer has only "
            f"{len(sentinels)} sentinels; lower train.block_size or raise "
            "train.mean_noise_span_length"
        )
    try:
        random_spans_noise_mask(1, T, density, mean_length)
    except ValueError as e:
        raise UserError(f"bad span corruption settings: {e}") from None
    return SpanCorruption(sentinels, eos_id, density, mean_length)
