"""The server's indexing thread: a first scan at start-up, periodic rescans, and rescans on request."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Literal

from clipalbum.server.errors import ClipalbumError
from clipalbum.server.library import IndexBusyError
from clipalbum.server.malloc import return_free_memory

if TYPE_CHECKING:
    from clipalbum.server.library import Library

log = logging.getLogger(__name__)

# Between scans the thread looks this often for what another process changed (Library.follow_other_writers),
# so that status counts and search results agree within about this long, and no request pays for catching up.
FOLLOW_INTERVAL_S = 1.0
SWITCH_BLOCKED_WAIT_S = 10.0  # a model switch that could not swap (another indexer, an error) rests this long


class BackgroundIndexer:
    """Runs Library.index() on one thread, so queries keep being answered while photos are embedded, and
    between scans follows other processes' changes to the data directory (Library.follow_other_writers).

    Requests made while a scan runs are coalesced into one follow-up scan: the files they are about
    may have been listed before they changed.
    """

    def __init__(self, library: "Library", rescan_minutes: float = 30.0, initial_scan: bool = True) -> None:
        self.library = library
        self.rescan_seconds = max(0.0, rescan_minutes) * 60.0  # 0: no periodic rescans
        self.initial_scan = initial_scan
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._scanning = False
        self._thread: threading.Thread | None = None
        self._follow_problem: str | None = None  # the last follow step's error, logged once until it changes
        self._switch_waits: str | None = None  # why a finished switch cannot swap yet, logged once
        self._switch_blocked_until = 0.0  # time.monotonic() before which the switch is not tried again

    @property
    def scanning(self) -> bool:
        with self._lock:
            return self._scanning

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the indexer thread is already started")
        if self.initial_scan:
            self._wake.set()
        # A daemon thread: an interrupted scan is safe (the index is crash-safe) and resumes at the next start.
        self._thread = threading.Thread(target=self._loop, name="clipalbum-indexer", daemon=True)
        self._thread.start()

    def request_scan(self) -> Literal["started", "queued"]:
        """Asks for a rescan; 'queued' when one is running (it will be followed by one more)."""
        with self._lock:
            state: Literal["started", "queued"] = "queued" if self._scanning else "started"
            self._wake.set()
        log.info("rescan requested (%s)", state)
        return state

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no scan runs or is queued (for tests and the demo); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.scanning and not self._wake.is_set():
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops the running scan after the photo in hand (what it did is kept, the next start goes on), waiting
        at most `timeout` seconds; True when the thread ended."""
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("indexing is still running after %.0f s; it stops with the process and resumes "
                        "at the next start", timeout)
            return False
        return True

    def _loop(self) -> None:
        # time.monotonic() of the next periodic rescan (counted from the end of the last scan); inf: none
        next_scan = time.monotonic() + self.rescan_seconds if self.rescan_seconds else math.inf
        while not self._stopping.is_set():
            # A model switch under way embeds between the other work, without idling.
            switch = self.library.switch
            busy = switch is not None and not switch.resting() and time.monotonic() >= self._switch_blocked_until
            idle = 0.0 if busy else max(0.0, min(FOLLOW_INTERVAL_S, next_scan - time.monotonic()))
            woken = self._wake.wait(idle)
            if self._stopping.is_set():
                break
            if not woken and time.monotonic() < next_scan:
                self._follow()
                if busy:
                    self._switch()
                continue
            self._scan()
            next_scan = time.monotonic() + self.rescan_seconds if self.rescan_seconds else math.inf

    def _switch(self) -> None:
        """Goes on embedding the photos with the model being switched to for about FOLLOW_INTERVAL_S, so that
        other processes' changes and periodic rescans are taken in between; a scan requested (or the server
        stopping) interrupts it after the batch in hand, and it resumes after."""
        deadline = time.monotonic() + FOLLOW_INTERVAL_S
        try:
            self.library.continue_switch(should_stop=lambda: (self._stopping.is_set() or self._wake.is_set()
                                                              or time.monotonic() > deadline))
            self._switch_waits = None
        except IndexBusyError as exc:  # `clipalbum index` holds the data directory: swap after it
            if str(exc) != self._switch_waits:
                log.info("model switch: every photo is embedded; the swap waits: %s", exc)
            self._switch_waits = str(exc)
            self._switch_blocked_until = time.monotonic() + SWITCH_BLOCKED_WAIT_S
        except Exception as exc:  # keep serving with the current model; try again at the next round
            self.last_error = f"model switch: {exc.__class__.__name__}: {exc}"
            log.exception("model switch step failed")
            self._switch_blocked_until = time.monotonic() + SWITCH_BLOCKED_WAIT_S
        finally:
            return_free_memory()

    def _follow(self) -> None:
        try:
            self.library.follow_other_writers()
            self._follow_problem = None
        except Exception as exc:  # e.g. the data directory unreadable for a moment: keep serving, try again
            problem = f"{exc.__class__.__name__}: {exc}"
            if problem != self._follow_problem:
                log.warning("could not look for other processes' changes: %s", problem, exc_info=True)
            self._follow_problem = problem

    def _scan(self) -> None:
        with self._lock:
            self._wake.clear()
            self._scanning = True
        try:
            summary = self.library.index(progress=False, should_stop=self._stopping.is_set)
            self.last_error = None
            log.info("scan finished: %s", summary)
        except IndexBusyError as exc:  # `clipalbum index` runs on the same data directory: not an error
            self.last_error = str(exc)
            log.warning("scan skipped: %s", exc)
        except ClipalbumError as exc:
            self.last_error = str(exc)
            log.error("scan failed: %s", exc)
        except Exception as exc:  # keep serving queries whatever a scan hits
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            log.exception("scan failed unexpectedly")
        finally:
            return_free_memory()  # decoded photos and batches: ~50 MB a long-running server need not keep
            with self._lock:
                self._scanning = False
