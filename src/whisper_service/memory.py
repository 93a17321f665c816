"""glibc heap settings that keep a long-running process's memory flat."""

from __future__ import annotations

import ctypes
import os

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: only blocks past this are mapped on their own
TRIM_THRESHOLD = 256 * 2**20


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


def file_job_heap() -> None:
    """One heap arena for the `whisper-service` command's file jobs (`transcribe`, and
    `batch` in process), set before its decode workers start. Each worker thread otherwise
    gets an arena of its own and keeps the memory its batches freed there, out of the other's
    reach: one arena lowered a file job's peak at the same speed (bench/transcribe.py).
    glibc's moving thresholds stay: the fixed ones `tune_heap` sets for a server, which keeps
    its warm-up's memory for the clients, only raised a file job's peak. An explicit
    MALLOC_ARENA_MAX in the environment wins."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt") and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, 1)


def tune_heap(arenas: int = 2) -> None:
    """Set glibc's heap up for a server process, before its threads start.

    - Two arenas. glibc gives each new thread that meets contention an arena of its own (up
      to 8 per core) and keeps the freed memory in it. Sessions run on a pool of worker
      threads, so each extra client grew RSS by an arena's worth; with two arenas, by a few
      MB (bench/server.py).
    - Fixed thresholds: the working memory a decode frees stays in the heap for the next one.
      By default glibc maps large blocks on their own and gives back freed memory at the top
      of the heap, with thresholds that move as blocks come and go. Warm-up's working memory
      (start-up pays a full batch per worker) was then partly returned and paid again by
      whichever client came next, so idle RSS and the cost of a client varied from run to
      run. Fixed, a client costs about the same whether it is the first or the sixteenth, at
      the same decode speed (bench/memory.py --only-clients). Memory freed past
      TRIM_THRESHOLD still goes back.

    An explicit MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ in the
    environment wins.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    for variable, param, value in (("MALLOC_ARENA_MAX", _M_ARENA_MAX, arenas),
                                   ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                   ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if variable not in os.environ:
            libc.mallopt(param, value)
