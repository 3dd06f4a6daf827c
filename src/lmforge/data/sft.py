"""Supervised fine-tuning batches: conversations -> chat-template tokens -> (x, y) rows, optionally
packed several to a row without attention between them.

Tokens and labels (after Ouyang et al., 2022, InstructGPT, and the instruction-tuning practice of
training on responses only): a conversation is rendered with the model's chat template and
tokenized with its assistant mask (tokenizer/chat.py `ChatTemplate.tokenize`: 1 on every answer's
tokens and the end-of-turn token that closes it, 0 on system and user turns and on the assistant
headers). The model reads x = ids[:-1] and predicts y = ids[1:], where every position that would
predict a token outside the mask is -100, so the loss is the cross-entropy of the assistant's
tokens alone, end-of-turn included: the model learns to answer and to stop. A conversation longer
than `max_length + 1` tokens is cut at the end (counted in `truncated`); one left with no assistant
token to predict is dropped (counted in `dropped`).

Packing (`packing=True`, the training split only): short conversations waste most of a padded row,
so several are laid end to end in one row of at most `max_length` tokens (first-fit decreasing by
length, deterministic). Each keeps its own positions (0, 1, ... from its first token) and the
attention mask is block-diagonal and causal, M[q, k] = (segment[q] == segment[k]) and k <= q,
so no token attends to another conversation: a packed row computes exactly what its conversations
would compute alone, in fewer, fuller rows. A packed batch is (x, y, positions (B, T), mask
(B, 1, T, T)); an unpacked one (x, y), padded on the right (causal attention never lets a real
token see the padding after it, so it needs no mask).

Exact match (tasks/sft.py) generates each conversation's last answer from everything before it:
`prompts` holds those ids, ending in the generation prompt (the assistant header), cut from the
left to leave room for `max_new_tokens`, and `answers` the reference texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.data.classification import SPLITS, IndexedBatches, pad_right
from lmforge.data.conversations import Conversation, ConversationSplits
from lmforge.tokenizer.chat import ChatTemplate
from lmforge.train.fused_ce import IGNORE_INDEX

Row = tuple[list[int], list[int]]
"""(x, y): the model's input ids and its targets, -100 where the loss does not count."""


def encode_conversation(
    template: ChatTemplate, messages: Conversation, max_length: int
) -> tuple[Row, bool]:
    """(x, y) of one conversation, at most `max_length` tokens (module docstring), and whether
    it had to be cut to fit."""
    tokens = template.tokenize(messages)
    ids = tokens.ids[: max_length + 1]
    mask = tokens.assistant_mask[: max_length + 1]
    targets = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
    return (ids[:-1], targets), len(tokens.ids) > max_length + 1


@dataclass(frozen=True)
class AnswerPrompt:
    """What exact match needs of one conversation: its last answer and what comes before it."""

    ids: list[int]
    """The messages before the last answer with the generation prompt, cut from the left."""
    answer: str
    """The reference: the last assistant message."""
    request: str
    """The last user message before it (for the report)."""
    cut: bool
    """Whether the prompt lost tokens at its start to fit."""


def answer_prompt(template: ChatTemplate, messages: Conversation, budget: int) -> AnswerPrompt:
    """The prompt for generating the conversation's last answer: the messages before it, rendered
    with the generation prompt and cut from the left to `budget` tokens."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids = template.encode(messages[:last], add_generation_prompt=True)
    request = next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), "")
    return AnswerPrompt(ids[-budget:], messages[last]["content"], request, len(ids) > budget)


def pack_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """Rows (lists of example indices) holding at most `max_length` tokens each: first-fit
    decreasing, ties broken by index, so the packing is the same on every run."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for p, free in enumerate(room):
            if lengths[i] <= free:
                packs[p].append(i)
                room[p] -= lengths[i]
                break
        else:
            packs.append([i])
            room.append(max_length - lengths[i])
    return packs


def collate_packed(rows: list[list[Row]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(x, y, positions, mask) of packed rows, each a list of (x, y) laid end to end."""
    xs = [[t for x, _ in row for t in x] for row in rows]
    ys = [[t for _, y in row for t in y] for row in rows]
    positions = [[p for x, _ in row for p in range(len(x))] for row in rows]
    segments = [[s for s, (x, _) in enumerate(row) for _ in x] for row in rows]
    x, _ = pad_right(xs, pad_id)  # (B, T)
    y, _ = pad_right(ys, IGNORE_INDEX)  # (B, T)
    pos, _ = pad_right(positions, 0)  # (B, T)
    seg, _ = pad_right(segments, -1)  # (B, T): -1 on padding
    T = x.size(1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T): query and key in one conversation
    return x, y, pos, (same & causal)[:, None]  # mask (B, 1, T, T)


@dataclass
class SFTBatches(IndexedBatches):
    """Encoded conversations of every split -> batches for train/loop.py (module docstring), plus
    what exact match needs: the prompts and answers, the kinds, and the template."""

    rows: dict[str, list[Row]]
    prompts: dict[str, list[AnswerPrompt]]
    kinds: dict[str, list[str | None]]
    template: ChatTemplate
    pad_id: int
    max_length: int
    max_new_tokens: int
    eval_examples: int
    packs: list[list[int]] | None = None
    """Training rows packed together (indices into rows["train"]), or None without packing."""
    truncated: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    baseline: Any = None
    """The starting model's test metrics (tasks/sft.py), when measured."""

    def __post_init__(self) -> None:
        super().__init__({})  # rows are counted by `size`: there are no labels

    @classmethod
    def build(
        cls,
        splits: ConversationSplits,
        template: ChatTemplate,
        pad_id: int,
        max_length: int,
        max_new_tokens: int,
        eval_examples: int,
        packing: bool = False,
    ) -> SFTBatches:
        rows, prompts, kinds, truncated, dropped = {}, {}, {}, {}, {}
        for split in SPLITS:
            kept = []
            truncated[split] = dropped[split] = 0
            for messages, kind in zip(splits.conversations[split], splits.kinds[split]):
                (x, y), cut = encode_conversation(template, messages, max_length)
                truncated[split] += cut
                if all(t == IGNORE_INDEX for t in y):
                    dropped[split] += 1
                    continue
                kept.append((messages, kind, (x, y)))
            rows[split] = [r for _, _, r in kept]
            kinds[split] = [k for _, k, _ in kept]
            budget = max_length - max_new_tokens
            prompts[split] = [answer_prompt(template, m, budget) for m, _, _ in kept]
        packs = pack_rows([len(x) for x, _ in rows["train"]], max_length) if packing else None
        return cls(
            rows, prompts, kinds, template, pad_id, max_length, max_new_tokens,
            eval_examples, packs, truncated, dropped,
        )  # fmt: skip

    def size(self, split: str) -> int:
        if split not in self.rows:
            raise ValueError(f"split must be one of {tuple(self.rows)}, got {split!r}")
        if split == "train" and self.packs is not None:
            return len(self.packs)
        return len(self.rows[split])

    def collate(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if split == "train" and self.packs is not None:
            packed = [[self.rows["train"][i] for i in self.packs[p]] for p in index.tolist()]
            return collate_packed(packed, self.pad_id)
        picked = [self.rows[split][i] for i in index.tolist()]
        x, _ = pad_right([x for x, _ in picked], self.pad_id)  # (B, T)
        y, _ = pad_right([y for _, y in picked], IGNORE_INDEX)  # (B, T)
        return x, y

    def scored(self, split: str) -> int:
        """How many conversations of `split` are generated for exact match."""
        n = len(self.rows[split])
        return min(n, self.eval_examples) if self.eval_examples > 0 else n
