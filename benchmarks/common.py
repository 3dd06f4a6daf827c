"""Helpers shared by the benchmark scripts: machine description, timing, tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = (
        f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        desc += (
            f"; GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs, CUDA {torch.version.cuda}"
        )
    return desc


def synchronize() -> None:
    """Wait for queued GPU work (a no-op where CUDA was never used)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of fn(), GPU work included."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_worker(script: str, *args: str) -> dict:
    """Run one measurement in a fresh process (`script --worker ...`) and return its JSON line.

    Each side of a comparison gets a process of its own, so neither inherits the other's state
    (allocator settings, thread pools, caches); the parent alternates them round by round.
    """
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, script, "--worker", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
