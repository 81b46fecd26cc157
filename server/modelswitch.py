"""Switching an index to another model in the background: every indexed photo is embedded again with the
new model into the store's staging table while the current model's vectors keep answering searches; when
none is left, the Library builds the new model's vector index, moves the staged vectors into the photos in
one transaction and swaps models (server/library.py `finish_switch`). Interrupted, it resumes where it was:
staged vectors are kept in the database, and a photo whose file changed meanwhile is listed again."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import msgspec
import numpy as np

from clipalbum.server.encoders import Encoders
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.preprocess import load_model_input
from clipalbum.server.schemas import SwitchProgress
from clipalbum.server.store import StagingJob, Store

log = logging.getLogger(__name__)

SWITCH_BATCH = 16  # photos embedded per image-tower call and per staging transaction
RETRY_UNREADABLE_S = 60.0  # after a pass that met files it could not read (gone, unplugged): wait, then again


class ModelSwitch:
    """Embeds the index's photos with `encoders` (the model being switched to) into the store's staging
    table, a batch at a time."""

    def __init__(self, store: Store, encoders: Encoders) -> None:
        self.store = store
        self.encoders = encoders
        self.model_id = encoders.manifest.model_id
        if dropped := store.discard_staged(keep_model_id=self.model_id):
            log.info("dropped %d vectors staged for an earlier model switch", dropped)
        self._after = 0  # the cursor: photo ids up to this one were looked at in this pass
        self._skipped = 0  # photos this pass could not read and left for later
        self._retry_at = 0.0  # time.monotonic() before which a pass that skipped some does not start again
        self._generation = store.generation()
        self.progress = self._measure()

    def resting(self) -> bool:
        """Whether a pass that met unreadable files is waiting before it tries them again."""
        return self._after == 0 and time.monotonic() < self._retry_at

    def _measure(self) -> SwitchProgress:
        staged, total = self.store.staging_counts(self.model_id)
        return SwitchProgress(model_id=self.model_id, done=min(staged, total), total=total)

    def embed_more(self, should_stop: Callable[[], bool]) -> bool:
        """Embeds photos that still need the new model until none is left (True: a pass from the first photo
        found none) or `should_stop()` (False; asked between batches)."""
        if (generation := self.store.generation()) != self._generation:  # a scan changed photos: count again
            self._generation, self.progress = generation, self._measure()
        while not should_stop():
            if self.resting():
                return False
            jobs = self.store.to_restage(self.model_id, self._after, SWITCH_BATCH)
            if not jobs:
                if self._after == 0:
                    return True
                self._after = 0  # photos added or changed behind the cursor, or skipped: one more pass
                if self._skipped:
                    log.warning("model switch: %d photos could not be read; trying them again in %.0f s",
                                self._skipped, RETRY_UNREADABLE_S)
                    self._skipped, self._retry_at = 0, time.monotonic() + RETRY_UNREADABLE_S
                continue
            vectors, errors = self._embed(jobs)
            # A file that is gone or changed is not the new model's to judge: the scan removes or re-reads it,
            # and this switch waits for it (an unplugged album keeps its photos). One present and unchanged
            # that cannot be decoded is staged as failed, as the scan records such files.
            keep = [i for i, (job, error) in enumerate(zip(jobs, errors)) if error is None or _unchanged(job)]
            self._skipped += len(jobs) - len(keep)
            kept = self.store.stage(self.model_id, [jobs[i] for i in keep], [vectors[i] for i in keep],
                                    [errors[i] for i in keep])
            self._after = jobs[-1].id
            # Counted, not measured: a COUNT of the staged rows at every batch would grow with the album.
            done = min(self.progress.done + kept, self.progress.total)
            self.progress = msgspec.structs.replace(self.progress, done=done)
        return False

    def _embed(self, jobs: list[StagingJob]) -> tuple[list[np.ndarray | None], list[str | None]]:
        """Vectors of the jobs' photos with the new model; None and the reason for a file it cannot read."""
        pixels, errors = [], []
        for job in jobs:
            try:
                pixels.append(load_model_input(job.original_path, self.encoders.manifest.image))
                errors.append(None)
            except Exception as exc:  # any decoder failure is this photo's, not the switch's
                pixels.append(None)
                errors.append(str(exc) if isinstance(exc, ClipalbumError) else f"{exc.__class__.__name__}: {exc}")
        readable = [p for p in pixels if p is not None]
        encoded = iter(self.encoders.image.encode(np.stack(readable)) if readable else [])
        return [None if p is None else next(encoded) for p in pixels], errors


def _unchanged(job: StagingJob) -> bool:
    """Whether the job's file is there with the size and time it had when listed."""
    try:
        stat = os.stat(job.original_path)
    except OSError:
        return False
    return stat.st_size == job.size and stat.st_mtime_ns == job.mtime_ns
