"""glibc heap settings that keep a long-running process's memory flat."""

from __future__ import annotations

import ctypes
import os

_M_ARENA_MAX = -8  # from glibc's malloc.h


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def trim() -> None:
    """Hand freed heap pages back to the OS; glibc keeps them otherwise and RSS stays high."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def limit_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for a server process.

    glibc gives each new thread that meets contention an arena of its own (up to 8 per core)
    and keeps the freed memory in it. Sessions run on a pool of worker threads, so each extra
    client grew RSS by 11-15 MB; with two arenas, by about 3-4 MB (bench/server.py). An
    explicit MALLOC_ARENA_MAX in the environment wins.
    """
    libc = _libc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, arenas)
