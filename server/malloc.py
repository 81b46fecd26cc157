"""glibc malloc tuning: fewer per-thread heaps, and freed memory given back to the system."""

from __future__ import annotations

import ctypes
import functools

M_ARENA_MAX = -8  # glibc mallopt parameter


@functools.cache  # loaded once: return_free_memory runs after every scan and photo upload
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): these are only optimisations
        return None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Caps glibc's per-thread heaps; call before threads start. Each worker thread otherwise gets a heap
    that keeps what it freed (decode threads, API threads), which grew the server by tens of MB."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_ARENA_MAX, arenas)


def return_free_memory() -> None:
    """Gives memory freed after a scan or a photo upload back to the system (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
