"""Token shards: text files -> `train.bin` / `val.bin` of token ids, and random batches from them.

The format is nanoGPT's (`data/*/prepare.py`, `train.py:get_batch`): each split is one flat array of
token ids written raw (uint16 when the vocabulary fits in 65,536 ids, else uint32), read back with
`np.memmap`; a batch is `batch_size` windows at offsets drawn with `torch.randint`, and the targets
are the inputs shifted by one token. Validation is the *last* `val_fraction` of the token stream.

A data directory is self-describing:

    train.bin  val.bin   raw token ids
    meta.json            dtype, vocab size, tokenizer fingerprint, token counts, inputs, sources
    tokenizer.json       the tokenizer that produced the ids

Large files are tokenized in chunks of about `chunk_bytes` (bounded memory, a progress bar in
bytes), cut only before a space or line break between two printable characters, where GPT-2 style
pre-tokenization splits anyway, so chunked ids equal whole-file ids. A stretch of 8 chunks without
such a place (say, Chinese text without spaces) is cut after a line break, else at a character
boundary; only there may the ids differ slightly from encoding the whole file at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lmforge.data.sources import source_record
from lmforge.errors import UserError
from lmforge.fileio import atomic_path
from lmforge.tokenizer import Tokenizer

META_FILE = "meta.json"
SPLITS = ("train", "val")
CHUNKS_PER_BATCH = max(8, 2 * (os.cpu_count() or 1))  # chunks per call to the batch encoder


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


# ---------------------------------------------------------------------------------------- prepare
def prepare(
    inputs: Sequence[str | Path],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    show_progress: bool = True,
    *,
    min_val_tokens: int = 2,
    append_eos: bool = True,
    chunk_bytes: int = 1 << 20,
) -> dict:
    """Tokenize `inputs` (one document per file) into the data directory `out_dir`; return its meta.

    `<|endoftext|>` follows every document when the tokenizer has it and `append_eos` is set.
    Validation takes the last `val_fraction` of the tokens, and at least `min_val_tokens` (pass
    `block_size + 1` so that validation holds one full block). The directory is written atomically.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UserError("no input files to prepare; pass text files or a source name")
    for p in paths:
        if not p.is_file():
            raise UserError(f"input file not found: {p}; pass existing text files")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    eos = tokenizer.document_separator_id if append_eos else None
    total_bytes = sum(p.stat().st_size for p in paths)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        stream = tmp / "tokens.tmp"
        bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            desc="tokenizing",
            disable=not show_progress,
        )
        counts = [0] * len(paths)
        with open(stream, "wb") as out, bar:
            for index, ids in _encode_files(paths, tokenizer, chunk_bytes, bar):
                if ids is None:  # end of document `index`
                    if eos is None:
                        continue
                    ids = [eos]
                np.asarray(ids, dtype=dtype).tofile(out)
                counts[index] += len(ids)
        records = [
            {"path": str(p), "bytes": p.stat().st_size, "tokens": n}
            for p, n in zip(paths, counts, strict=True)
        ]

        total = sum(r["tokens"] for r in records)
        n_val = max(total - int(total * (1.0 - val_fraction)), min_val_tokens)
        n_train = total - n_val
        if n_train < 2 or n_val < 2:
            raise UserError(
                f"the input gives only {total} tokens, too few for a train split and a validation "
                f"split of {n_val}; use more text (or a smaller block size)"
            )
        _split_stream(stream, tmp / "train.bin", tmp / "val.bin", n_train * dtype.itemsize)
        tokenizer.save(tmp)
        sources = [r for r in (source_record(p) for p in paths) if r is not None]
        meta = {
            "format": "lmforge-tokens/1",
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_kind": tokenizer.kind,
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "eos_id": eos,
            "tokens": {"train": n_train, "val": n_val},
            "val_fraction": val_fraction,
            "inputs": records,
            "sources": list({r["name"]: r for r in sources}.values()),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but an empty directory or an earlier data directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; choose a directory for the token data")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / META_FILE).exists():
        raise UserError(
            f"{out_dir} is not empty and is not an lmforge data directory; choose a new directory"
        )


def _encode_files(
    paths: Sequence[Path], tokenizer: Tokenizer, chunk_bytes: int, bar: tqdm
) -> Iterator[tuple[int, list[int] | None]]:
    """Yield (file index, ids) chunk by chunk in order, and (file index, None) after each file.

    Chunks of several files share one call to the batch encoder, which runs them in parallel.
    """
    pending: list[tuple[int, str | None, int]] = []  # (file index, text or None at its end, bytes)

    def flush() -> Iterator[tuple[int, list[int] | None]]:
        encoded = iter(tokenizer.encode_batch([t for _, t, _ in pending if t is not None]))
        for index, text, size in pending:
            bar.update(size)
            yield index, None if text is None else next(encoded)
        pending.clear()

    for index, path in enumerate(paths):
        for text, size in _text_chunks(path, chunk_bytes):
            pending.append((index, text, size))
            if len(pending) >= CHUNKS_PER_BATCH:
                yield from flush()
        pending.append((index, None, 0))
    yield from flush()


def _text_chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[str, int]]:
    """Yield (text, byte count) pieces of a UTF-8 file, cut where tokenization is unaffected."""
    carry, offset = b"", 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            data = carry + block
            if not block:
                if data:
                    yield _decode(data, path, offset), len(data)
                return
            cut = _safe_cut(data)
            if cut is None and len(data) >= 8 * chunk_bytes:
                cut = _fallback_cut(data)
            if cut is None:
                carry = data
                continue
            yield _decode(data[:cut], path, offset), cut
            carry, offset = data[cut:], offset + cut


# A printable ASCII character followed by " ", "\n" or "\r\n" and another printable character. Cutting
# right after the first character leaves every pre-token of GPT-2's regex (and of the char
# tokenizer) unchanged: a space joins the word after it, a lone line break stands alone.
_SAFE_CUT = re.compile(rb"[!-~](?=(?: |\n|\r\n)[!-~])")


def _safe_cut(data: bytes) -> int | None:
    """The last position in `data` where cutting does not change the tokenization."""
    for start in (max(0, len(data) - 4096), 0):
        last = deque(_SAFE_CUT.finditer(data, start), maxlen=1)
        if last:
            return last[0].end()
    return None


def _fallback_cut(data: bytes) -> int:
    """After the last newline, else at the last UTF-8 character boundary."""
    pos = data.rfind(b"\n")
    if pos >= 0:
        return pos + 1
    cut = len(data) - 1
    while cut > 0 and 0x80 <= data[cut] <= 0xBF:  # step back over continuation bytes
        cut -= 1
    return cut if cut > 0 else len(data)


def _decode(data: bytes, path: Path, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not valid UTF-8 text (byte {offset + e.start}); convert it to UTF-8"
        ) from None


def _split_stream(stream: Path, train: Path, val: Path, train_bytes: int) -> None:
    """Copy the tail of `stream` to `val`, then truncate `stream` and rename it to `train`."""
    with open(stream, "rb") as src, open(val, "wb") as dst:
        src.seek(train_bytes)
        shutil.copyfileobj(src, dst, length=1 << 22)
    os.truncate(stream, train_bytes)
    stream.rename(train)


# -------------------------------------------------------------------------------------- TokenData
class TokenData:
    """Train and validation token streams (memory-mapped or in memory) and batches from them."""

    def __init__(
        self,
        train: np.ndarray,
        val: np.ndarray,
        vocab_size: int,
        tokenizer_fingerprint: str | None = None,
        meta: dict | None = None,
        path: Path | None = None,
    ) -> None:
        self._splits = {"train": train, "val": val}
        self.vocab_size = vocab_size
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.meta = meta or {}
        self.path = path

    @classmethod
    def open(cls, data_dir: str | Path) -> TokenData:
        """Memory-map (read-only) a data directory written by `prepare`."""
        data_dir = Path(data_dir)
        meta_file = data_dir / META_FILE
        if not meta_file.is_file():
            raise UserError(
                f"no token data in {data_dir} (meta.json missing); run `lmforge prepare` first"
            )
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            dtype = np.dtype(meta["dtype"])
            counts = {split: int(meta["tokens"][split]) for split in SPLITS}
            vocab_size = int(meta["vocab_size"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{meta_file} is damaged ({e}); run `lmforge prepare` again") from None
        arrays = {}
        for split in SPLITS:
            file = data_dir / f"{split}.bin"
            expected = counts[split] * dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise UserError(
                    f"{file} is missing or not {expected} bytes as meta.json says; run `lmforge "
                    "prepare` again"
                )
            arrays[split] = np.memmap(file, dtype=dtype, mode="r")
        return cls(
            arrays["train"],
            arrays["val"],
            vocab_size,
            meta.get("tokenizer_fingerprint"),
            meta=meta,
            path=data_dir,
        )

    @classmethod
    def from_arrays(
        cls,
        train: np.ndarray,
        val: np.ndarray,
        vocab_size: int,
        tokenizer_fingerprint: str | None = None,
    ) -> TokenData:
        """Token streams held in memory (tests, benchmarks)."""
        return cls(np.asarray(train), np.asarray(val), vocab_size, tokenizer_fingerprint)

    @property
    def tokenizer_path(self) -> Path | None:
        """The data directory's `tokenizer.json`, if there is one."""
        if self.path is None or not (self.path / "tokenizer.json").is_file():
            return None
        return self.path / "tokenizer.json"

    def split(self, split: str) -> np.ndarray:
        """The flat token array of `split` ("train" or "val")."""
        if split not in self._splits:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self._splits[split]

    def num_tokens(self, split: str) -> int:
        return len(self.split(split))

    def _checked(self, split: str, block_size: int) -> np.ndarray:
        data = self.split(split)
        if len(data) < block_size + 1:
            raise UserError(
                f"block_size {block_size} is too large for the {split} split ({len(data)} tokens); "
                f"use a block size of at most {len(data) - 1} or prepare more data"
            )
        return data

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows (x, y), int64 of shape (B, T), y = x shifted by one (nanoGPT's sampler)."""
        data = self._checked(split, block_size)
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        return self._windows(data, ix.numpy(), block_size, device)

    def iter_eval_batches(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        max_batches: int | None = None,
        device: str | torch.device | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Windows at offsets 0, T, 2T, ... in order: every target predicted once (the tail that
        does not fill a whole window is left out). Batches of up to `batch_size` windows."""
        data = self._checked(split, block_size)
        starts = np.arange((len(data) - 1) // block_size) * block_size
        if max_batches is not None:
            starts = starts[: max_batches * batch_size]
        for i in range(0, len(starts), batch_size):
            yield self._windows(data, starts[i : i + batch_size], block_size, device)

    @staticmethod
    def _windows(
        data: np.ndarray, starts: np.ndarray, block_size: int, device: str | torch.device | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
        window = torch.from_numpy(data[offsets].astype(np.int64))  # (B, T+1)
        x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()  # (B, T) each
        if device is not None and torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(
                device, non_blocking=True
            )
        if device is not None:
            return x.to(device), y.to(device)
        return x, y
