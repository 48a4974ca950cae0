"""The training process's memory: its resident size for the logs, and freed heap pages handed back to the OS."""

from __future__ import annotations

import os


def resident_mb() -> float | None:
    """The process's resident memory now, in MB (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def release_free_memory() -> None:
    """glibc's malloc_trim: give freed heap pages back to the OS.

    Every batch has other image and prompt sizes, so the CPU allocator's free lists fragment and glibc keeps the
    freed pages; a 3000-step run's resident memory grew from 2.9 to 7 GB that way with nothing leaking. Trimming
    every few steps keeps it flat at the cost of a few milliseconds. A no-op where glibc is absent.
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (AttributeError when this libc has none)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None
