"""Freed CPU memory kept for the next step (glibc's ``mallopt``), chosen by every recipe on a
CPU."""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit


def keep_freed_memory() -> str | None:
    """Ask glibc's malloc to keep freed memory for the next allocation instead of giving it back
    to the kernel (``mallopt``: blocks up to 32 MiB from the heap, the heap never trimmed), and
    say so; None where the C library is not glibc.

    A training step frees and reallocates the same tensors every step. By default glibc hands
    large freed blocks back (``munmap``, heap trimming), so the next step's tensors page-fault
    on first touch: the quickstart's bf16 steps made ~2.5x the minor page faults and ran 10-25 %
    slower (classification 51 -> 44 ms, joint 116 -> 98 ms on a 2-core EPYC;
    BENCHMARKS.md). Numbers are unchanged; the process keeps its peak memory until it ends,
    as PyTorch's CUDA caching allocator does on a GPU. Process-wide, so recipes call it
    (:func:`make_accelerator` on a CPU), never the library on import."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return None
    if not (
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    ):
        return None
    return "freed CPU memory kept for reuse (glibc mallopt: no heap trimming, mmap above 32 MiB)"
