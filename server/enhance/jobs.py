"""Enhancement as background jobs, for the API: a bounded queue, one worker thread at low priority (so that
enhancing never starves search), results as files in the data directory, forgotten after an hour."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal

from clipalbum.server.enhance.conditioning import Conditioner
from clipalbum.server.enhance.photoio import output_format, read_photo, read_preview, to_image, write_photo
from clipalbum.server.enhance.runtime import Applied, EnhanceCancelled, EnhanceOptions, Enhancer
from clipalbum.server.errors import BundleError, ClipalbumError, NotFoundError, ServerBusyError
from clipalbum.server.malloc import return_free_memory
from clipalbum.server.preprocess import open_photo
from clipalbum.server.upload_gate import lower_priority

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
MAX_WAITING = 8  # jobs queued behind the running one; more are refused (503, try again)
KEEP_SECONDS = 3600.0  # a finished job, and its result file, is forgotten this long after it ended
MAX_FINISHED = 32  # and the oldest finished jobs beyond this many go first
MAX_RESULT_BYTES = 1_000_000_000  # and the oldest results beyond this much disk (a 100 MP PNG is ~200 MB)
ENHANCE_NICE = 10  # the worker's nice level: search requests (nice 0) take the CPU first
PREVIEW_FORMAT = "jpeg"  # previews are for the screen


class JobNotReadyError(ClipalbumError):
    """A job's result was asked for before it was done (or after it failed or was cancelled)."""


class PromptUnsupportedError(ClipalbumError):
    """A prompt for an enhancer trained with another search model than the server's (409)."""


@dataclass(frozen=True)
class JobRequest:
    options: EnhanceOptions = field(default_factory=EnhanceOptions)
    prompt: str | None = None
    preview: int | None = None  # long side in pixels; None: the full-size photo
    format: str = "same"  # same | jpeg | png


@dataclass
class Job:
    id: str
    name: str  # the source's file name: the result is named after it
    source: Path
    request: JobRequest
    photo_id: int | None = None  # None for an uploaded photo
    owns_source: bool = False  # an upload saved for the job, deleted with it
    state: JobState = "queued"
    tiles_done: int = 0
    tiles_total: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: Path | None = None
    result_name: str | None = None
    result_bytes: int = 0
    media_type: str | None = None
    width: int | None = None
    height: int | None = None
    applied: Applied | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def progress(self) -> float:
        if self.state == "done":
            return 1.0
        return self.tiles_done / self.tiles_total if self.tiles_total else 0.0


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or failing disk: the worker must go on
        log.warning("could not remove %s: %s", path, exc)


def check_photo(path: Path, name: str) -> None:
    """Not a photo, or too many pixels: refused when the job is asked for (422), not later. From its header
    alone, opened here so that the message names `name`, not a path on the server."""
    with open(path, "rb") as data, open_photo(data, prefix=f"{name}: "):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def jobs_folder(parent: Path) -> Path:
    """A fresh folder for this process's jobs under `parent`, after removing those of processes that are
    gone (a killed server leaves its results behind; nothing else lives there)."""
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        pid = old.name.split("-", 1)[0]
        if old.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = parent / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


class EnhanceJobs:
    """Queued enhancement jobs and the one thread that runs them, oldest first.

    `load` gives the enhancer; it is called once, on the worker thread (at low priority, so ONNX Runtime's
    threads are too), when the first job starts. `conditioner` embeds photos and prompts with the search
    model. All methods are thread-safe."""

    def __init__(self, folder: Path, load: Callable[[], Enhancer], conditioner: Conditioner,
                 max_waiting: int = MAX_WAITING, keep_seconds: float = KEEP_SECONDS,
                 max_finished: int = MAX_FINISHED, max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        self.folder = folder
        self._load = load
        self.conditioner = conditioner
        self.max_waiting, self.keep_seconds, self.max_finished = max_waiting, keep_seconds, max_finished
        self.max_result_bytes = max_result_bytes
        self._busy = False  # the worker has a job in hand (one cancelled meanwhile too: it still finishes a step)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._enhancer: Enhancer | None = None

    # --- the API's side ---

    def submit_photo(self, source: Path, name: str, request: JobRequest, photo_id: int) -> Job:
        """A job for a photo of the album (read in place, never written)."""
        self._check_prompt(request.prompt)
        check_photo(source, name)
        return self._enqueue(Job(id=uuid.uuid4().hex, name=name, source=source, request=request, photo_id=photo_id))

    def submit_upload(self, data: BinaryIO, name: str, request: JobRequest) -> Job:
        """A job for an uploaded photo: its bytes are saved in the jobs folder first (the request's spooled
        file is gone when the request ends)."""
        self._check_prompt(request.prompt)
        with self._changed:
            self._check_room()  # before 25 MB go to disk, not only after
        job_id = uuid.uuid4().hex
        saved = self.folder / f"{job_id}.upload"
        try:
            with open(saved, "xb") as out:
                data.seek(0)
                shutil.copyfileobj(data, out, 1 << 20)
            check_photo(saved, name)
            return self._enqueue(Job(id=job_id, name=name, source=saved, request=request, owns_source=True))
        except BaseException:
            saved.unlink(missing_ok=True)
            raise

    def _check_prompt(self, prompt: str | None) -> None:
        """Refuses (400) a prompt this server cannot follow, before a job is queued for it."""
        if prompt is not None and not self.conditioner.usable:
            raise PromptUnsupportedError("a prompt needs the search model the enhancer was trained with; this "
                                         "server's is another one (enhance without a prompt, or serve with that model)")

    def get(self, job_id: str) -> Job:
        """A snapshot of the job (a copy: the worker goes on changing the real one)."""
        with self._changed:
            self._forget_old()
            return replace(self._job(job_id))

    def queue_position(self, job_id: str) -> int | None:
        """How many jobs run or wait before this one; None once it runs or has finished."""
        with self._changed:
            job = self._job(job_id)
            if job.state != "queued":
                return None
            return next(i for i, queued in enumerate(self._queue) if queued is job) + self._busy

    def cancel(self, job_id: str) -> Job:
        """Cancels a queued or running job (a running one stops before its next tile) and forgets it; a
        finished one is forgotten and its result deleted. Returns the job as it ends."""
        with self._changed:
            job = self._job(job_id)
            if job.state == "queued":
                self._queue.remove(job)
                self._finish(job, "cancelled")
            elif job.state == "running":
                job.cancel.set()  # the worker ends it, and deletes anything it wrote
            self._drop(job)
            return replace(job, state="cancelled") if job.state == "running" else replace(job)

    def result(self, job_id: str) -> Job:
        """The finished job whose result file is ready to send; JobNotReadyError otherwise."""
        job = self.get(job_id)
        if job.state != "done" or job.result is None:
            detail = f": {job.error}" if job.error else ""
            raise JobNotReadyError(f"job {job_id} is {job.state}{detail}; its result exists once it is done")
        return job

    def stop(self) -> None:
        """Cancels every job and refuses new ones, without waiting (the server's shutdown, first thing)."""
        with self._changed:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel.set()
            self._changed.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stops (as `stop`), waits up to `timeout` s for the running job, deletes the jobs folder."""
        self.stop()
        if self._worker is not None:
            self._worker.join(timeout)
        if self._worker is None or not self._worker.is_alive():
            shutil.rmtree(self.folder, ignore_errors=True)

    # --- bookkeeping (with self._changed held) ---

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no enhancement job {job_id} (unknown, or finished over an hour ago)")
        return job

    def _enqueue(self, job: Job) -> Job:
        with self._changed:
            try:
                self._check_room()
            except ServerBusyError:
                if job.owns_source:
                    job.source.unlink(missing_ok=True)
                raise
            self._jobs[job.id] = job
            self._queue.append(job)
            if self._worker is None or not self._worker.is_alive():  # (a worker never dies, but if it did)
                self._worker = threading.Thread(target=self._work, name="enhance-worker", daemon=True)
                self._worker.start()
            self._changed.notify_all()
            return replace(job)

    def _check_room(self) -> None:
        if self._stopping:
            raise ServerBusyError("the server is stopping")
        self._forget_old()
        if len(self._queue) >= self.max_waiting:
            raise ServerBusyError(f"{len(self._queue)} enhancement jobs are waiting already; try again later")

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        if job.owns_source:
            _remove(job.source)

    def _drop(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        if job.result is not None:
            _remove(job.result)

    def _forget_old(self) -> None:
        finished = sorted((job for job in self._jobs.values() if job.state in FINISHED),
                          key=lambda job: job.finished or 0.0)
        too_old = time.time() - self.keep_seconds
        kept_bytes = 0
        for i in range(len(finished) - 1, -1, -1):  # newest first: the oldest go when over the budgets
            job = finished[i]
            kept_bytes += job.result_bytes
            over_budget = kept_bytes > self.max_result_bytes and i < len(finished) - 1  # the newest stays
            if (job.finished or 0.0) < too_old or i < len(finished) - self.max_finished or over_budget:
                self._drop(job)
                kept_bytes -= job.result_bytes

    # --- the worker ---

    def _work(self) -> None:
        lower_priority(ENHANCE_NICE)  # ONNX Runtime's threads, started from this one, inherit it
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.state, job.started = "running", time.time()
                self._busy = True
            try:
                self._run(job)
                state, error = "done", None
            except EnhanceCancelled:
                state, error = "cancelled", None
            except BundleError as exc:  # its message names files on the server: the log gets it, not the client
                log.error("enhancement job %s: %s", job.id, exc)
                state, error = "failed", "the enhancer could not be loaded; see the server log"
            except ClipalbumError as exc:  # (decode errors name the photo by its file name only)
                state, error = "failed", str(exc)
            except Exception as exc:  # the worker must outlive any one job
                log.error("enhancement job %s (%s) failed", job.id, job.name, exc_info=exc)
                state, error = "failed", "internal error; see the server log"
            finally:
                return_free_memory()  # a 12 MP photo and its result are ~70 MB; don't keep them
            with self._changed:
                self._busy = False
                if job.cancel.is_set() and state == "done":  # cancelled after its last tile: honour it
                    state = "cancelled"
                self._finish(job, state, error)
                if state == "cancelled" and job.result is not None:
                    _remove(job.result)
                    job.result = None

    def _run(self, job: Job) -> None:
        if self._enhancer is None:
            self._enhancer = self._load()
        enhancer, conditioner = self._enhancer, self.conditioner
        request = job.request
        if request.preview:
            source = read_preview(job.source, request.preview, label=job.name)
        else:
            source = read_photo(job.source, label=job.name)
        prompt = conditioner.text(request.prompt) if request.prompt else None

        def progress(done: int, total: int) -> None:
            job.tiles_done, job.tiles_total = done, total

        pixels = source.pixels
        result, job.applied = enhancer.enhance(pixels, request.options, embedding=conditioner.image(pixels),
                                               prompt=prompt, progress=progress, cancelled=job.cancel.is_set)
        fmt, suffix = output_format(source.format, PREVIEW_FORMAT if request.preview else request.format,
                                    source.alpha is not None)
        target = self.folder / f"{job.id}{suffix}"
        write_photo(to_image(result, source, fmt), source, target, fmt, overwrite=True)
        job.result, job.media_type = target, f"image/{'jpeg' if fmt == 'JPEG' else fmt.lower()}"
        job.result_bytes = target.stat().st_size
        job.result_name = f"{Path(job.name).stem}-enhanced{'-preview' if request.preview else ''}{suffix}"
        job.height, job.width = result.shape[:2]

