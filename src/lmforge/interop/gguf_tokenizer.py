"""Tokenizers to and from GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys).

A GGUF file has no tokenizer.json: llama.cpp (convert_hf_to_gguf.py, `get_vocab_base`) stores a
byte-level BPE tokenizer as
    tokenizer.ggml.model       "gpt2" (byte-level BPE)
    tokenizer.ggml.pre         name of the pre-tokenizer regex ("gpt-2", "smollm", "llama-bpe", ...)
    tokenizer.ggml.tokens      every token by id, spelled in GPT-2's byte alphabet (control and
                               user-defined tokens spelled as plain text)
    tokenizer.ggml.token_type  1 normal, 3 control (special), 4 user-defined, 5 unused (padding)
    tokenizer.ggml.merges      "a b" merge rules in priority order
    tokenizer.ggml.{bos,eos,padding}_token_id, tokenizer.chat_template
The GGUF spec also defines `tokenizer.huggingface.json`, the whole tokenizer.json, "for executors
that support HF tokenizers directly".

Design decisions
- Export writes both: the ggml keys for llama.cpp and `tokenizer.huggingface.json`, so every
  lmforge tokenizer (character-level too) comes back exactly. Import prefers that JSON when it is
  present and otherwise rebuilds the tokenizer from the ggml keys with `tokenizers`.
- A tokenizer that is not byte-level BPE (the character tokenizer) is written with
  `tokenizer.ggml.model = "none"` (llama.cpp runs such a model on token ids only).
- `pre` names map to Hugging Face pre-tokenizers that split text the way llama.cpp's regexes do
  (llama-vocab.cpp); an unknown name falls back to GPT-2's regex with a warning.
- Padding ids that convert_hf_to_gguf.py adds up to the model's vocabulary size (`[PAD{i}]`,
  type unused) are written the same way and left out of the rebuilt vocabulary.
- bos/eos ids map to and from the `bos_token` / `eos_token` of the `Tokenizer` (which it keeps in
  tokenizer_config.json); SmolLM2-Instruct's eos is `<|im_end|>`, its bos `<|im_start|>`.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable

from gguf import GGUFWriter, TokenType
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import UserError
from lmforge.interop.gguf_read import GGUFFile
from lmforge.tokenizer import EOS_TOKEN, Tokenizer
from lmforge.tokenizer.gpt2 import GPT2_PATTERN

HF_JSON_KEY = "tokenizer.huggingface.json"
PAD_TOKEN = re.compile(r"\[PAD\d+\]")

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Llama 3's pre-tokenizer regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`)."""


def _byte_level() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _digits_then_bytes() -> pre_tokenizers.PreTokenizer:
    # llama.cpp: "\p{N}" then GPT-2's regex; SmolLM2's and StarCoder's tokenizer.json spell it so.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


# `tokenizer.ggml.pre` -> pre-tokenizers that split that way; the first is built on import, any of
# them is recognised on export.
PRE_TOKENIZERS: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], ...]] = {
    "gpt-2": (_byte_level, lambda: _split_then_bytes(GPT2_PATTERN)),
    "smollm": (_digits_then_bytes,),
    "starcoder": (_digits_then_bytes,),
    "refact": (_digits_then_bytes,),
    "llama-bpe": (lambda: _split_then_bytes(LLAMA3_PATTERN),),
}


# ------------------------------------------------------------------------------------- import
def tokenizer_from_gguf(f: GGUFFile) -> Tokenizer:
    """The tokenizer of a GGUF file: its `tokenizer.huggingface.json` if present, else rebuilt
    from the ggml keys; with the chat template and the bos/eos token attributes set."""
    hf_json = f.get(HF_JSON_KEY)
    if hf_json:
        tokenizer = Tokenizer.from_json(hf_json, origin=f"{f.path} ({HF_JSON_KEY})")
    else:
        tokenizer = tokenizer_from_ggml(f)
    tokenizer.chat_template = f.get("tokenizer.chat_template")
    _set_bos_eos(tokenizer, f)
    return tokenizer


def tokenizer_from_ggml(f: GGUFFile) -> Tokenizer:
    """A byte-level BPE `Tokenizer` rebuilt from the `tokenizer.ggml.*` keys alone."""
    kind = f.get("tokenizer.ggml.model")
    if kind is None:
        raise UserError(f"{f.path} has no tokenizer in its metadata (tokenizer.ggml.model)")
    if kind != "gpt2":
        raise UserError(
            f"{f.path} has a {kind!r} tokenizer (tokenizer.ggml.model); lmforge rebuilds only "
            "byte-level BPE ('gpt2') tokenizers from GGUF metadata"
        )
    tokens: list[str] = f.require("tokenizer.ggml.tokens")
    types: list[int] = f.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in f.get("tokenizer.ggml.merges") or []]
    vocab: dict[str, int] = {}
    added: list[AddedToken] = []
    for i, (token, token_type) in enumerate(zip(tokens, types)):
        if token_type == TokenType.UNUSED and PAD_TOKEN.fullmatch(token):
            continue  # padding up to the model's vocabulary size: not a token of the tokenizer
        vocab.setdefault(token, i)
        if token_type in (TokenType.CONTROL, TokenType.USER_DEFINED):
            special = token_type == TokenType.CONTROL
            added.append(AddedToken(token, special=special, normalized=False))
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(f.get("tokenizer.ggml.pre"), f)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([t for t in added if t.special])
    backend.add_tokens([t for t in added if not t.special])
    return Tokenizer(backend)


def _pre_tokenizer(pre: str | None, f: GGUFFile) -> pre_tokenizers.PreTokenizer:
    if pre in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[pre][0]()
    warnings.warn(
        f"{f.path}: unknown tokenizer.ggml.pre {pre!r}; splitting text with GPT-2's regex, so "
        f"some token ids may differ from llama.cpp's (known: {', '.join(PRE_TOKENIZERS)})",
        stacklevel=3,
    )
    return _byte_level()


def _set_bos_eos(tokenizer: Tokenizer, f: GGUFFile) -> None:
    """`tokenizer.bos_token` / `eos_token` from the file's bos/eos ids, where they name a token."""
    tokenizer.bos_token = _token(tokenizer, f.get("tokenizer.ggml.bos_token_id"))
    tokenizer.eos_token = _token(tokenizer, f.get("tokenizer.ggml.eos_token_id"))


def _token(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    return tokenizer.id_to_token(token_id) if isinstance(token_id, int) else None


# ------------------------------------------------------------------------------------- export
def add_tokenizer(writer: GGUFWriter, tokenizer: Tokenizer, vocab_size: int) -> None:
    """Write `tokenizer` into the metadata of `writer`, padded to the model's `vocab_size` ids."""
    if tokenizer.vocab_size > vocab_size:
        raise UserError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size} "
            "embeddings: they do not belong together"
        )
    spec = json.loads(tokenizer.to_json())
    if _is_byte_level_bpe(spec):
        _add_bpe(writer, tokenizer, spec, vocab_size)
    else:
        writer.add_tokenizer_model("none")  # llama.cpp: no vocabulary, token ids only
    writer.add_string(HF_JSON_KEY, tokenizer.to_json())
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_add_bos_token(False)  # lmforge never adds special tokens when encoding
    for key, token_id in special_ids(tokenizer).items():
        writer.add_uint32(f"tokenizer.ggml.{key}", token_id)


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """{"bos_token_id": .., "eos_token_id": ..}: the tokenizer's bos/eos tokens; without a bos
    token `<|endoftext|>` (GPT-2's convention: it is both), else the eos; absent ones left out."""
    eos = tokenizer.eos_id  # `eos_token`, else `<|endoftext|>`
    bos = tokenizer.bos_id
    if bos is None:
        bos = tokenizer.token_to_id(EOS_TOKEN)
    ids = {"bos_token_id": eos if bos is None else bos, "eos_token_id": eos}
    return {k: v for k, v in ids.items() if v is not None}


def _is_byte_level_bpe(spec: dict) -> bool:
    decoder = spec.get("decoder") or {}
    return spec["model"]["type"] == "BPE" and decoder.get("type") == "ByteLevel"


def _add_bpe(writer: GGUFWriter, tokenizer: Tokenizer, spec: dict, vocab_size: int) -> None:
    tokens, types = _tokens_and_types(tokenizer, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)


def _tokens_and_types(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token and type; ids without a token become `[PAD{i}]` (unused)."""
    backend = tokenizer.backend
    by_id = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}
    added = backend.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i].content)
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    return tokens, [int(t) for t in types]


def _pre_name(tokenizer: Tokenizer) -> str:
    """The `tokenizer.ggml.pre` name whose pre-tokenizer equals this tokenizer's."""
    ours = _pre_state(tokenizer.backend.pre_tokenizer)
    for name, builders in PRE_TOKENIZERS.items():
        if any(_pre_state(build()) == ours for build in builders):
            return name
    warnings.warn(
        "the tokenizer's pre-tokenizer matches no llama.cpp `tokenizer.ggml.pre`; writing "
        "'default', so llama.cpp may split text differently (lmforge reads it back exactly)",
        stacklevel=4,
    )
    return "default"


def _pre_state(pre: pre_tokenizers.PreTokenizer | None) -> dict | None:
    return None if pre is None else json.loads(pre.__getstate__())
