"""GPT-2's byte-level BPE, rebuilt offline from the `gpt2.tiktoken` ranks file.

References:
- Radford et al. 2019, GPT-2; `openai/gpt-2` `encoder.py` (`bytes_to_unicode`, the pre-token regex).
- tiktoken: a ranks file lists every token's bytes (base64) and its rank; BPE repeatedly merges the
  adjacent pair whose concatenation has the lowest rank.
- The tiktoken -> Hugging Face conversion (`transformers`' TikTokenConverter, tiktoken's educational
  `recover_merges`): replaying BPE on each token's bytes, allowing only merges of lower rank, stops at
  exactly two parts, and those two parts are the token's merge. Sorting merges by the token's rank
  gives the HF `merges` list; the HF vocab is the ranks with bytes spelled by `bytes_to_unicode`.

The ranks file ships in the `openai-whisper` sdist (offline source `gpt2-tokenizer`).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import UserError
from lmforge.tokenizer.core import EOS_TOKEN, GPT2_VOCAB_SIZE, Tokenizer

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenization regex: contractions, letter runs, digit runs, punctuation, spaces."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file: one `base64(token bytes) rank` pair per line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"tiktoken ranks file not found: {path}; fetch it with the 'gpt2-tokenizer' source"
        )
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise UserError(
                f"{path} line {number} is not `base64-token rank`; is this a tiktoken ranks file?"
            ) from None
    return ranks


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run BPE on `token`'s bytes using only merges ranked below `max_rank`."""
    parts = [bytes([b]) for b in token]
    while True:
        best: tuple[int, int] | None = None  # (rank, index)
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def ranks_to_vocab_and_merges(
    ranks: dict[bytes, int],
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Convert tiktoken ranks into a Hugging Face BPE vocab and its merges in priority order."""
    byte_to_char = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise UserError(
                f"token {token!r} (rank {rank}) has no merge; the ranks file is corrupt"
            )
        merges.append((spell(parts[0]), spell(parts[1])))
    return vocab, merges


def load_gpt2_tokenizer(tiktoken_path: str | Path) -> Tokenizer:
    """GPT-2's tokenizer (50,257 ids, `<|endoftext|>` = 50256) from a `gpt2.tiktoken` file."""
    vocab, merges = ranks_to_vocab_and_merges(read_tiktoken_ranks(tiktoken_path))
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT2_PATTERN), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS_TOKEN])
    if backend.get_vocab_size() != GPT2_VOCAB_SIZE or backend.token_to_id(EOS_TOKEN) != 50256:
        raise UserError(f"{tiktoken_path} does not hold GPT-2's 50,256 ranks; pass gpt2.tiktoken")
    return Tokenizer(backend)


def gpt2_tokenizer(cache_dir: str | Path | None = None) -> Tokenizer:
    """GPT-2's tokenizer from the offline source `gpt2-tokenizer` (fetched once, then cached)."""
    from lmforge.data.sources import fetch  # lazy: lmforge.data imports this package

    return load_gpt2_tokenizer(fetch("gpt2-tokenizer", cache_dir=cache_dir) / "gpt2.tiktoken")
