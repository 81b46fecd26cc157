"""One BLAS thread while a library is open, restored when the last one closes."""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_limits

_lock = threading.Lock()
_holders = 0
_limiter: threadpool_limits | None = None


def hold_one_blas_thread() -> None:
    """Limit the process's BLAS to one thread (the limit is process-wide, so open libraries share it)."""
    global _holders, _limiter
    with _lock:
        if _holders == 0:
            _limiter = threadpool_limits(limits=1, user_api="blas")
        _holders += 1


def release_blas_threads() -> None:
    """Undo one `hold_one_blas_thread()`; the last one restores the limits found before the first."""
    global _holders, _limiter
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0 and _limiter is not None:
            _limiter.restore_original_limits()
            _limiter = None
