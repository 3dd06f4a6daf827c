"""Device and precision choice: precision follows the hardware.

bf16 autocast runs on CUDA GPUs that support it and on CPUs with native bf16 instructions
(AVX-512-BF16 or AMX). Everywhere else we train and infer in fp32: on a plain AVX2 CPU a bf16 matmul
falls back to a reference kernel that is hundreds of times slower than fp32 (see ANCHORS.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys

import torch

from lmforge.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX-512-BF16 or AMX tiles)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                if fn():
                    return True
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `name` on `device` (`auto`: bf16 where native, else fp32)."""
    if name not in PRECISIONS:
        raise UserError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return torch.float32
    if name == "fp16":
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `dtype` (a no-op for fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_KEEP_BYTES = 1 << 25  # 32 MB: glibc's largest allowed mmap threshold on 64-bit


@functools.cache
def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory for reuse instead of returning it to the OS at every step.

    glibc serves allocations above a threshold (128 kB to 32 MB, adapting) with fresh mmap() calls and
    unmaps them on free, so every training step page-faults its activations in anew; on a 2-core
    CPU that costs ~15% of a small model's step. Raising the mmap and trim thresholds to 32 MB makes
    such blocks come from, and go back to, the heap (the effect of running under jemalloc or
    tcmalloc, which PyTorch recommends for CPUs). Linux/glibc only; returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _ALLOCATOR_KEEP_BYTES)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2 * _ALLOCATOR_KEEP_BYTES)
        return bool(ok)
    except (OSError, AttributeError):
        return False
