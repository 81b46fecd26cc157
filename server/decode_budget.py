"""One memory budget for the process's full-size image decodes, so N decode threads x 100 MP cannot add up."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from clipalbum.server.errors import ServerBusyError
from clipalbum.server.malloc import return_free_memory

# 192 MB holds two 12 MP RGB photos with their copies, or one 45 MP camera raw-sized PNG; a bigger image
# takes the whole budget alone. A Raspberry Pi with 1 GB can lower it, a big server raise it.
DEFAULT_BUDGET_MB = 192
# A decode that held this much returns its memory to the system when it ends (glibc keeps freed heap).
TRIM_AFTER_BYTES = 32_000_000


def budget_from_env() -> int:
    """CLIPALBUM_DECODE_BUDGET_MB, else DEFAULT_BUDGET_MB, in bytes."""
    return int(float(os.environ.get("CLIPALBUM_DECODE_BUDGET_MB", "") or DEFAULT_BUDGET_MB) * 1_000_000)


class DecodeBudget:
    """Bytes that decodes may hold at once. Reservations are served first come, first served (a big photo
    is not starved by small ones), and one larger than the whole budget waits until it has it to itself."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.used = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def waiting(self) -> int:
        """Reservations not granted yet."""
        with self._changed:
            return len(self._queue)

    @contextmanager
    def reserve(self, nbytes: int, timeout: float | None = None) -> Iterator[None]:
        """Holds `nbytes` (at most the whole budget) for the block; waits at most `timeout` seconds
        (None: as long as it takes) and raises ServerBusyError when the wait runs out."""
        nbytes = min(max(0, nbytes), self.capacity)
        turn = object()
        with self._changed:
            self._queue.append(turn)
            try:
                granted = self._changed.wait_for(
                    lambda: self._queue[0] is turn and self.used + nbytes <= self.capacity, timeout)
            finally:
                self._queue.remove(turn)
                self._changed.notify_all()  # the next in line may fit now
            if not granted:
                raise ServerBusyError(f"the server is decoding other photos ({self.used / 1e6:.0f} of its "
                                      f"{self.capacity / 1e6:.0f} MB decode budget in use); try again shortly")
            self.used += nbytes
        try:
            yield
        finally:
            with self._changed:
                self.used -= nbytes
                idle = self.used == 0
                self._changed.notify_all()
            if idle and nbytes >= TRIM_AFTER_BYTES:
                return_free_memory()  # the decoded pixels are gone; don't keep their pages


DECODE_BUDGET = DecodeBudget(budget_from_env())
