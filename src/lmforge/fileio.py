"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A killed process therefore leaves either the old file or the new one, never half of one. Directories
(checkpoints, model exports) are staged the same way: build `NAME.tmp-XXXX/`, fsync its files, then
rename it over `NAME/`.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import UserError


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename itself) to disk where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and rename it onto `target`.

    Works for files (the caller writes the yielded path) and directories (the caller creates and
    fills it). On an exception the temporary path is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_file():  # some writers (safetensors) create 0600 files: use the usual mode
            tmp.chmod(0o666 & ~_umask())
        _fsync_tree(tmp)
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
        fsync_dir(path)
    elif path.exists():
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | Path, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_text_input(path: str | Path) -> str:
    """Read a non-empty UTF-8 text input file (see `check_text_file`)."""
    return check_text_file(path).read_text(encoding="utf-8")


def check_text_file(path: str | Path) -> Path:
    """Check that `path` is a non-empty UTF-8 text file, streaming ."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input file not found: {path}")
    if path.is_dir():
        raise UserError(f"expected a text file but {path} is a directory")
    decoder = codecs.getincrementaldecoder("utf-8")()
    end, has_text = 0, False  # end: bytes read so far
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            end += len(block)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                # `e.object` is the bytes held back from the previous block plus this block.
                byte = end - len(e.object) + e.start
                raise UserError(
                    f"{path} is not valid UTF-8 text (byte {byte}); convert it to UTF-8"
                ) from None
            has_text = has_text or bool(text.strip())
            if not block:
                break
    if not has_text:
        raise UserError(f"input file is empty: {path}")
    return path
