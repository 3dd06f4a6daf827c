"""One `Tokenizer` class for every kind of tokenizer lmforge uses, saved as a single `tokenizer.json`.

The class wraps a Hugging Face `tokenizers.Tokenizer` (the Rust library), so byte-level BPE, GPT-2's
BPE and the character-level tokenizer all share one file format that `transformers` can read too.

Design decisions:
- `kind` is *inferred from the structure* of the tokenizer, not stored: `tokenizer.json` has a strict
  schema (the Rust loader rejects unknown top-level keys), and a side file would break the "one file"
  rule. The rules, in order:
    "char"  a WordLevel model whose pre-tokenizer splits every character (`train_char`);
    "gpt2"  a BPE model with GPT-2's vocabulary: 50,257 tokens, `<|endoftext|>` = 50256;
    "bpe"   any other BPE model (`train_bpe`, or a BPE tokenizer.json from elsewhere);
    otherwise the Rust model type in lower case ("wordlevel", "unigram", "wordpiece").
- `encode` never adds special tokens, but special-token strings that appear in the text (such as a
  literal `<|endoftext|>`) are matched and encoded as those tokens.
- `fingerprint()` hashes the canonical JSON (keys sorted, no whitespace, runtime padding and
  truncation settings left out), so two tokenizers that encode the same way share a fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import UserError
from lmforge.fileio import atomic_path, write_json_atomic, write_text_atomic

EOS_TOKEN = "<|endoftext|>"
"""The end-of-text token appended after each document (GPT-2's name for it)."""

SEP_TOKEN = "[SEP]"
"""BERT's separator, which also separates documents in WordPiece pre-training data."""

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""The model's Jinja chat template, saved beside `tokenizer.json` (as `transformers` does)."""
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
"""Beside `tokenizer.json`: the names of the bos/eos tokens (`transformers`' file and keys)."""

# The pre-tokenizer `train_char` installs: every character becomes its own word.
CHAR_SPLIT_PATTERN = r"[\s\S]"

GPT2_VOCAB_SIZE = 50257


class Tokenizer:
    """A tokenizer of any kind (see the module docstring), backed by `tokenizers.Tokenizer`."""

    def __init__(
        self,
        backend: HFTokenizer,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self.backend = backend  # treat as read-only: kind, specials and JSON are cached below
        self.chat_template = chat_template  # Jinja source, or None for a plain LM
        self.bos_token = bos_token  # e.g. "<|im_start|>" for SmolLM2; None: no beginning token
        self.eos_token = eos_token  # the token that ends generation; None: `<|endoftext|>`
        self._json: str | None = None
        self.kind = _infer_kind(backend)
        added = backend.get_added_tokens_decoder()
        self._specials = [added[i].content for i in sorted(added) if added[i].special]
        # Char-level fast path: a dict lookup per character is ~40x faster than the Rust pipeline,
        # which pays for offsets and a regex match per character.
        self._char_to_id: dict[str, int] | None = None
        if self.kind == "char":
            self._char_to_id = backend.get_vocab(with_added_tokens=False)

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` file, or the `tokenizer.json` inside a directory."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise UserError(
                f"tokenizer not found: {file}; pass a tokenizer.json file, a directory holding one, "
                "or the name 'gpt2'"
            )
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read tokenizer file {file} ({e}); check the path") from None
        tokenizer = cls.from_json(text, origin=str(file))
        template = file.parent / CHAT_TEMPLATE_FILE
        if template.is_file():
            tokenizer.chat_template = template.read_text(encoding="utf-8")
        tokenizer.bos_token, tokenizer.eos_token = _read_bos_eos(
            file.parent / TOKENIZER_CONFIG_FILE
        )
        return tokenizer

    @classmethod
    def from_json(cls, text: str, origin: str = "<string>") -> Tokenizer:
        """Build a tokenizer from the text of a `tokenizer.json`."""
        try:
            backend = HFTokenizer.from_str(text)
        except Exception as e:  # the Rust loader raises plain `Exception`
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"{origin} is not a valid tokenizer.json ({reason}); re-create or re-save the tokenizer"
            ) from None
        return cls(backend)

    def to_json(self) -> str:
        """The `tokenizer.json` text of this tokenizer."""
        if self._json is None:
            self._json = self.backend.to_str()
        return self._json

    def save(self, directory: str | Path) -> Path:
        """Write `directory/tokenizer.json` (and `chat_template.jinja` if there is a template)
        atomically and return the path of `tokenizer.json`."""
        target = Path(directory) / TOKENIZER_FILE
        with atomic_path(target) as tmp:
            tmp.write_text(self.backend.to_str(pretty=True), encoding="utf-8")
        if self.chat_template is not None:
            write_text_atomic(Path(directory) / CHAT_TEMPLATE_FILE, self.chat_template)
        if self.bos_token is not None or self.eos_token is not None:
            config = Path(directory) / TOKENIZER_CONFIG_FILE
            existing = _read_json_object(config)  # keep what other tools wrote there
            existing.update(bos_token=self.bos_token, eos_token=self.eos_token)
            write_json_atomic(config, existing)
        return target

    # ---------------------------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""
        if self._char_to_id is not None and not self._has_special_text(text):
            try:
                return [self._char_to_id[c] for c in text]
            except KeyError as e:
                raise self._oov_error(e.args[0]) from None
        try:
            return self.backend.encode(text, add_special_tokens=False).ids
        except Exception:
            self._raise_if_oov([text])
            raise

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; BPE kinds run in parallel in the Rust batch encoder."""
        if self._char_to_id is not None:
            return [self.encode(t) for t in texts]
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def encode_batch_with_offsets(
        self, texts: Sequence[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(token ids, character offsets) of each text: token i covers `text[start:end]`, for
        every kind (a byte-level token that holds part of a character covers the whole one)."""
        self._raise_if_oov(texts)
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [(e.ids, e.offsets) for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; ids outside the vocabulary are skipped (the `tokenizers` behaviour)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids, special and added tokens included (the embedding table's row count)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        """Id of the end token (`eos_token`, else `<|endoftext|>`), or None when there is none."""
        return self.backend.token_to_id(self.eos_token or EOS_TOKEN)

    @property
    def document_separator_id(self) -> int | None:
        """The token between documents of pre-training data: `<|endoftext|>` (GPT-2, SmolLM2,
        `lmforge prepare`), else the bos token, else the eos token, else BERT's `[SEP]`; None when
        there is none."""
        sep_id = self.backend.token_to_id(SEP_TOKEN)
        for token_id in (self.backend.token_to_id(EOS_TOKEN), self.bos_id, self.eos_id, sep_id):
            if token_id is not None:
                return token_id
        return None

    @property
    def bos_id(self) -> int | None:
        """Id of `bos_token`, or None when the tokenizer has no beginning-of-sequence token."""
        return self.backend.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def special_tokens(self) -> list[str]:
        """The special tokens, in id order."""
        return list(self._specials)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None when it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def require_ids(
        self, tokens: Sequence[str], fix: str, owner: str = "tokenizer"
    ) -> dict[str, int]:
        """Ids of `tokens`; a `UserError` naming the missing ones (then `fix`) if any is absent."""
        ids = {t: self.token_to_id(t) for t in tokens}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise UserError(f"{owner} has no {' or '.join(missing)} token; {fix}")
        return ids

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None when the id is out of range."""
        return self.backend.id_to_token(int(token_id))

    def fingerprint(self) -> str:
        """Short sha256 of the canonical tokenizer JSON, to detect a tokenizer/model mismatch."""
        obj = json.loads(self.to_json())
        obj.pop("truncation", None)
        obj.pop("padding", None)
        canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    # --------------------------------------------------------------------------------- internals
    def _has_special_text(self, text: str) -> bool:
        return any(s in text for s in self._specials)

    def _oov_error(self, char: str) -> UserError:
        return UserError(
            f"character {char!r} (U+{ord(char):04X}) is not in the character tokenizer's vocabulary; "
            "build the tokenizer from text that contains it, or remove it from the input"
        )

    def _raise_if_oov(self, texts: Iterable[str]) -> None:
        if self._char_to_id is None:
            return
        for text in texts:
            for special in self._specials:
                text = text.replace(special, "")
            for c in text:
                if c not in self._char_to_id:
                    raise self._oov_error(c)


def _read_json_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); fix or delete it") from None
    return data if isinstance(data, dict) else {}


def _token_name(value) -> str | None:
    """A special token as `tokenizer_config.json` writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_bos_eos(path: Path) -> tuple[str | None, str | None]:
    config = _read_json_object(path)
    return _token_name(config.get("bos_token")), _token_name(config.get("eos_token"))


def _infer_kind(backend: HFTokenizer) -> str:
    """The tokenizer kind, from its model type and pre-tokenizer (rules in the module docstring)."""
    model_type = type(backend.model).__name__
    if model_type == "WordLevel":
        pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
        if pre.get("type") == "Split" and pre.get("pattern") == {"Regex": CHAR_SPLIT_PATTERN}:
            return "char"
    if model_type == "BPE":
        is_gpt2 = (
            backend.get_vocab_size(with_added_tokens=True) == GPT2_VOCAB_SIZE
            and backend.token_to_id(EOS_TOKEN) == GPT2_VOCAB_SIZE - 1
        )
        return "gpt2" if is_gpt2 else "bpe"
    return model_type.lower()


def load_tokenizer(path_or_name: str | Path) -> Tokenizer:
    """A tokenizer from a `tokenizer.json` path, a directory holding one, or the name "gpt2"."""
    if str(path_or_name) == "gpt2" and not Path(path_or_name).exists():
        from lmforge.tokenizer.gpt2 import gpt2_tokenizer

        return gpt2_tokenizer()
    return Tokenizer.from_file(path_or_name)
