"""`lmforge data fetch NAME` and `lmforge data list`: the offline source catalog."""

from __future__ import annotations

from lmforge.data.sources import fetch, list_sources, source_record


def list_main() -> None:
    rows = list_sources()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "cached" if r["cached"] else "      "
        print(f"{r['name']:<{width}}  {mark}  {r['licence']:<14}  {r['description']}")


def fetch_main(name: str) -> None:
    path = fetch(name)
    record = source_record(path) or {}
    files = record.get("files", [])
    total = sum(f.get("bytes", 0) for f in files)
    print(
        f"{name}: {len(files)} file(s), {total / 1e6:.1f} MB, licence {record.get('licence')} "
        f"-> {path}"
    )
