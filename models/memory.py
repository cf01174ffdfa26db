"""Giving freed heap memory back to the operating system after a large request."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time

_lock = threading.Lock()
_last = 0.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "malloc_trim") else None  # glibc only (not musl, macOS)


def release_freed_memory(min_interval_s: float = 0.0) -> bool:
    """Return the free pages of every malloc arena to the system (glibc `malloc_trim`).

    glibc keeps what a large request freed (millions of small Python objects, torch
    buffers) in its arenas for reuse, so a process's RSS stays at its peak after a burst;
    trimming hands it back. Costs a few milliseconds; a no-op without glibc, or when the
    last trim of this process was less than `min_interval_s` ago (a burst trims once).
    """
    global _last
    libc = _libc()
    if libc is None:
        return False
    with _lock:
        if time.monotonic() - _last < min_interval_s:
            return False
        _last = time.monotonic()
    return bool(libc.malloc_trim(0))
