"""Decodes search-by-photo uploads (and thumbnails) on a few threads of their own; the requests waiting for
one wait on the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from clipalbum.server.errors import ServerBusyError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Search-by-photo uploads decoded at once (a second core stays free for text search), how many more may wait
# (each holds its request body, spooled to disk beyond 1 MB, so a waiting upload costs at most ~1 MB of memory),
# and how long one waits, for a slot and then for the process's decode budget together, before the API
# answers 503 "try again". With 50 clients (bench/load_mixed.py) uploads crawl (one low-priority decode
# thread on a saturated CPU) and pile up: 8 waiting for 10 s turned 25 of 477 uploads away, 32 for 30 s
# 19 of 420. A wait costs a coroutine and at most ~1 MB, so up to 64 wait, as long as thumbnails do.
UPLOAD_DECODES = max(1, (os.cpu_count() or 2) // 2)
UPLOAD_QUEUE = 64
UPLOAD_WAIT_SECONDS = 30.0

# Upload decode threads run at this nice level: a 81 MP PNG takes ~0.4 s of a core, and at equal
# priority it slowed the text encoder's threads beside it (text search p99 x3 while uploads ran).
DECODE_NICE = 10


def lower_priority(nice: int = DECODE_NICE) -> None:
    """Raises the calling thread's nice level (Linux: nice is per thread, and the threads it starts inherit
    it). Elsewhere a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:
        log.debug("thread %s keeps normal priority: %s", threading.current_thread().name, exc)


class UploadGate:
    """At most `slots` uploads (or other decodes: `what` names them) run at once, on `slots` threads of their
    own, at low priority unless told otherwise; at most `queue` more wait, each for at most `wait_s` seconds;
    the rest are refused at once (ServerBusyError: 503, try again).

    Waiting happens on the event loop, not in a worker thread: the API's thread pool is small (asyncio's
    default: cores + 4), and uploads parked on its threads kept text searches waiting for seconds.
    One semaphore per event loop (asyncio primitives belong to the loop that first uses them).
    """

    def __init__(self, slots: int, queue: int, wait_s: float, *, what: str = "uploaded photos",
                 thread_name: str = "upload-decode", low_priority: bool = True) -> None:
        self.slots, self.queue, self.wait_s = slots, queue, wait_s
        self.what, self.thread_name, self.low_priority = what, thread_name, low_priority
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())
        self._pool: ThreadPoolExecutor | None = None  # started on first use: importing the API starts nothing
        self.admitted = 0  # decoding or waiting (only the event loop's thread changes it)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self.slots)
        return semaphore

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix=self.thread_name,
                                            initializer=lower_priority if self.low_priority else None)
        return self._pool

    async def run(self, fn: Callable[[], T]) -> T:
        """Runs `fn` on one of the gate's threads once a slot is free."""
        busy = ServerBusyError(f"the server is decoding {self.slots} other {self.what}; try again in a few seconds")
        if self.admitted >= self.slots + self.queue:
            raise busy
        semaphore = self._semaphore()
        self.admitted += 1
        try:
            if semaphore.locked():  # (a free slot is taken without waiting, whatever wait_s is)
                try:
                    await asyncio.wait_for(semaphore.acquire(), self.wait_s)
                except asyncio.TimeoutError:
                    raise busy from None
            else:
                await semaphore.acquire()
            try:
                return await asyncio.get_running_loop().run_in_executor(self._executor(), fn)
            finally:
                semaphore.release()
        finally:
            self.admitted -= 1
