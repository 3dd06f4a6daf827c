"""Conversations for instruction and chat fine-tuning (`--task sft`): read, checked, split.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`
with at least one assistant message (the model learns the assistant's turns). Sources:

- a JSON Lines file (`.jsonl`, or `.json` holding one array of objects), one conversation per row:
  `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}`
  (`data.messages_field` renames "messages"). A row may carry a "kind" (a category), which the
  report uses to break exact match down.
- `chatterbot`: the chatterbot corpus (`chatterbot-corpus` offline source, BSD-3-Clause): about
  2,000 English conversations in YAML, one file per topic, each a list of alternating turns; the
  first is the user's. A trailing turn without an answer is left out. Kind: the file's topic.
- `instructions`: the generated instruction set of data/instructions.py, whose answers are exact.

Bad rows (a missing or non-list "messages", an empty conversation, an unknown role, content that
is not a string, no assistant message) are errors naming the file and line: training on half a
data set silently is worse than stopping. Splits: data/splits.py (seeded, 80/10/10 by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmforge.data.classification import SPLITS, read_jsonl_file
from lmforge.data.instructions import GENERATION_SEED, KINDS, generate_instructions
from lmforge.data.sources import SOURCES, fetch, source_record
from lmforge.data.splits import split_indices
from lmforge.errors import UserError

ROLES = ("system", "user", "assistant")

Conversation = list[dict[str, str]]


@dataclass
class ConversationSplits:
    """The conversations of the train, val and test splits, their kinds, and their provenance."""

    conversations: dict[str, list[Conversation]]
    kinds: dict[str, list[str | None]]
    source: dict = field(default_factory=dict)
    """name, path, licence, seed, split sizes (for the report)."""

    def size(self, split: str) -> int:
        return len(self.conversations[split])


# ------------------------------------------------------------------------------------- checking
def check_conversation(messages: object, where: str) -> Conversation:
    """`messages` as a clean conversation, or a `UserError` naming `where` and the fault."""
    if not isinstance(messages, list):
        raise UserError(f"{where}: the conversation must be a list of messages")
    if not messages:
        raise UserError(f"{where}: empty conversation (no messages)")
    clean: Conversation = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise UserError(f"{where}: message {i} is not an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UserError(f"{where}: message {i} has role {role!r}; use one of {ROLES}")
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i} ({role}) has no 'content' string")
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in clean):
        raise UserError(f"{where}: no assistant message with content: nothing to learn from")
    return clean


# -------------------------------------------------------------------------------------- sources
def read_conversation_file(
    path: str | Path, messages_field: str = "messages"
) -> tuple[list[Conversation], list[str | None], dict]:
    """(conversations, kinds, source record) of a JSON Lines file of {messages_field: [...]}."""
    path = Path(path)
    rows = read_jsonl_file(path, BUILTIN, "conversations")
    conversations, kinds = [], []
    for i, row in enumerate(rows, start=1):
        where = f"{path} row {i}"
        if messages_field not in row:
            fields = ", ".join(map(str, row)) or "none"
            raise UserError(
                f"{where}: no {messages_field!r} field (fields: {fields}); set "
                "--data.messages_field"
            )
        conversations.append(check_conversation(row[messages_field], where))
        kind = row.get("kind")
        kinds.append(str(kind) if kind is not None else None)
    return conversations, kinds, {"name": path.name, "path": str(path)}


def read_chatterbot() -> tuple[list[Conversation], list[str | None], dict]:
    """The chatterbot corpus as conversations (user first, turns alternating), kind = topic."""
    directory = fetch("chatterbot-corpus")
    conversations, kinds = [], []
    for path in sorted(directory.glob("*.yml")):
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UserError(f"cannot read {path} ({type(e).__name__}); fetch it again") from None
        for turns in document.get("conversations") or []:
            turns = [str(t).strip() for t in turns or []]
            turns = turns[: len(turns) // 2 * 2]  # a last question without its answer goes
            if not turns:
                continue
            roles = ("user", "assistant") * (len(turns) // 2)
            conversations.append([{"role": r, "content": t} for r, t in zip(roles, turns)])
            kinds.append(path.stem)
    record = dict(source_record(directory) or {})
    record.pop("files", None)
    record.update(name="chatterbot", path=str(directory))
    return conversations, kinds, record


def read_instructions(count: int, seed: int = GENERATION_SEED) -> tuple[list, list, dict]:
    """The generated instruction set (data/instructions.py) as conversations, kind = task kind."""
    rows = generate_instructions(count, seed)
    record = {
        "name": "instructions",
        "path": "generated by lmforge.data.instructions",
        "licence": "Apache-2.0 (generated by lmforge)",
        "generation": f"{count:,} unique requests of {len(KINDS)} kinds "
        f"({', '.join(KINDS)}), generation seed {seed}",
    }
    return [r["messages"] for r in rows], [r["kind"] for r in rows], record


BUILTIN: dict[str, Callable[[int, int], tuple[list, list, dict]]] = {
    "instructions": read_instructions,
    "chatterbot": lambda examples, generation_seed: read_chatterbot(),
}
"""Source names `--data` accepts besides files: name -> reader(examples, generation seed); the
generation settings apply to the generated set only."""


# ------------------------------------------------------------------------------------- splitting
def load_conversation_splits(
    spec: str,
    *,
    messages_field: str = "messages",
    examples: int = 4000,
    generation_seed: int = GENERATION_SEED,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_subset: int = 0,
) -> ConversationSplits:
    """The split conversations of `spec`: a built-in name or a JSONL file (module docstring).
    `examples` and `generation_seed` size and seed the generated `instructions` set."""
    name = "chatterbot" if spec == "chatterbot-corpus" else spec
    if name in BUILTIN and not Path(spec).exists():
        conversations, kinds, record = BUILTIN[name](examples, generation_seed)
    elif spec in SOURCES and not Path(spec).exists():
        raise UserError(
            f"source {spec!r} holds no conversations; use {', '.join(BUILTIN)} or a .jsonl file"
        )
    else:
        conversations, kinds, record = read_conversation_file(spec, messages_field)
    n = len(conversations)
    parts = split_indices(n, seed, val_fraction, test_fraction, train_subset, "conversations")
    out = ConversationSplits(
        conversations={s: [conversations[i] for i in parts[s]] for s in SPLITS},
        kinds={s: [kinds[i] for i in parts[s]] for s in SPLITS},
        source=record,
    )
    out.source.update(split_seed=seed, sizes={s: out.size(s) for s in SPLITS}, examples=n)
    return out
