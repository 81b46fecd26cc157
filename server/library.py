"""The Library: one indexed photo collection (model, SQLite store, ANN index) that the CLI and the API share."""

from __future__ import annotations

import logging
import math
import operator
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import date
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from clipalbum.server.ann import AnnIndex
from clipalbum.server.blasthreads import hold_one_blas_thread, release_blas_threads
from clipalbum.server.containment import real_folders, servable_path
from clipalbum.server.diskerrors import storage_problem
from clipalbum.server.encoders import Encoders, load_encoders
from clipalbum.server.errors import ClipalbumError, InvalidQueryError, NotFoundError, NoVectorError
from clipalbum.server.model_cache import bundle_of_model, record_use
from clipalbum.server.model_resolver import resolve_bundle
from clipalbum.server.modelswitch import ModelSwitch
from clipalbum.server.pathnames import display
from clipalbum.server.preprocess import load_model_input
from clipalbum.server.query_terms import parse_terms
from clipalbum.server.relevance import suggested_min_score
from clipalbum.server.scanner import BATCH_SIZE, INFER_BATCH, IndexSummary, Scan
from clipalbum.server.schemas import FailedFile, Hit, ScanProgress, SearchResponse, StatusResponse
from clipalbum.server.settings import DataPaths
from clipalbum.server.store import IndexBusyError, PhotoRecord, Store, VectorRow, open_store

__all__ = ["IndexBusyError", "IndexSummary", "Library", "PhotoRecord"]

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 500
MAX_K = 200
MAX_OFFSET = 10_000
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_PHOTO_ID = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY range: larger ids cannot exist (nor be bound)
DATE_SORT_POOL = 500  # sort="date" orders this many most relevant hits by capture time
EXACT_FILTER_MAX = 2_000  # a date window holding fewer photos than this is ranked exactly, without the ANN
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

SortOrder = Literal["relevance", "date"]


class Serving(NamedTuple):
    """The model that answers searches, its vector index, and the switch to another model under way (if
    any): replaced whole when a switch ends, so a search or a status that took it at its start sees one
    model throughout."""

    encoders: Encoders
    ann: AnnIndex
    switch: ModelSwitch | None = None


class Library:
    """An album index ready to search; `index()` brings it up to date with the album folders."""

    def __init__(self, paths: DataPaths, encoders: Encoders, store: Store,
                 switch_to: Encoders | None = None) -> None:
        self.paths = paths
        self.store = store
        # With `switch_to`, the photos are embedded with that model in the background (BackgroundIndexer calls
        # continue_switch); `encoders` answers until it is done.
        self._serving = Serving(encoders, AnnIndex(encoders.manifest.embed_dim),
                                None if switch_to is None else ModelSwitch(store, switch_to))
        self.progress = ScanProgress()  # replaced (never mutated) while a scan runs: safe to read anywhere
        self.batch_size: int | None = None  # scan tuning; None: the scanner's defaults
        self.infer_batch: int | None = None
        self.decode_threads: int | None = None
        # Follow symlinks whose target is outside every album folder (and serve those photos): off unless
        # `--follow-links-outside` turned it on for this data directory.
        # (A running server re-reads it in follow_other_writers, so another process's change reaches it.)
        self.follow_links_outside = store.get_meta("follow_links_outside") == "1"
        # The album roots' real paths, for serving: refreshed by add_root, index() and follow_other_writers,
        # so that a thumbnail or original request resolves only its own file's path.
        self._real_roots: tuple[str, ...] = ()
        self._refresh_roots()
        self._scan_lock = threading.Lock()
        self._swap_lock = threading.Lock()  # held by a model switch from its commit until the new model answers
        self._ann_generation = 0  # the SQLite generation the in-memory ANN index reflects
        self._follow_lock = threading.Lock()  # one catch-up with other processes' commits at a time
        self._close_lock = threading.Lock()
        self._closed = False
        # One BLAS thread while the library is open: a search's products are small (a query against the
        # probed lists, a re-rank of a few dozen rows), and OpenBLAS's second thread spins after each, holding
        # the core the text encoder needs next. Server CPU per text query at 100k photos: 24.3 and 28.5 ms
        # with two threads, 14.6 and 14.7 ms with one; at 1M 35.5 and 33.8 against 16.6 and 21.2 ms (two
        # rounds of bench/query_latency.py each, alternating; HTTP p50 moved within the noise).
        # Last, so that an __init__ that raises holds nothing; close() releases it.
        hold_one_blas_thread()

    @property
    def encoders(self) -> Encoders:
        return self._serving.encoders

    @property
    def model_id(self) -> str:
        return self._serving.encoders.manifest.model_id

    @property
    def embed_dim(self) -> int:
        return self._serving.encoders.manifest.embed_dim

    @property
    def ann(self) -> AnnIndex:
        return self._serving.ann

    @property
    def switch(self) -> ModelSwitch | None:
        return self._serving.switch

    @ann.setter
    def ann(self, ann: AnnIndex) -> None:
        self._serving = self._serving._replace(ann=ann)

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, paths: DataPaths, model: str | Path | None = None, roots: list[str] | None = None,
             build_if_missing: bool = True, follow_links_outside: bool | None = None,
             switch_in_background: bool = False) -> "Library":
        """Opens (creating if needed) the index in `paths` with the model bundle `model` (or the default).

        `roots` are album folders to add; each must exist. `follow_links_outside` True or False changes the
        data directory's setting (None keeps it). With `switch_in_background`, an index whose photos another
        model embedded keeps answering with that model (when its bundle is still at hand) while
        continue_switch() embeds them with this one. Raises ClipalbumError subclasses with the fix.
        """
        paths.ensure()
        bundle = resolve_bundle(paths, model, build_if_missing)
        encoders = load_encoders(bundle)
        record_use(paths.root, encoders.manifest.model_id, bundle)
        store = open_store(paths)
        try:
            serving = _answering_model(paths, store, encoders) if switch_in_background else None
            if switch_in_background and serving is None and (dropped := store.discard_staged()):
                log.info("dropped %d vectors staged for a model switch that was given up", dropped)
            library = cls(paths, serving or encoders, store, switch_to=encoders if serving else None)
        except BaseException:
            store.close()
            raise
        try:
            for root in roots or []:
                library.add_root(root)
            if follow_links_outside is not None:
                library.set_follow_links_outside(follow_links_outside)
            library._load_ann()
        except BaseException:
            library.close()
            raise
        return library

    def add_root(self, folder: str | Path) -> Path:
        """Adds an album folder (resolved to an absolute path) to the ones this index scans."""
        path = Path(folder).expanduser()
        if not path.exists():
            raise ClipalbumError(f"album folder {path} does not exist")
        if not path.is_dir():
            raise ClipalbumError(f"{path} is not a folder; give the folder that holds your photos")
        path = path.resolve()
        for known in self.roots:
            if path == known:
                return path
            if known in path.parents or path in known.parents:
                inner, outer = (path, known) if known in path.parents else (known, path)
                raise ClipalbumError(f"{inner} is inside the album {outer}; index one or the other, not both")
        self.store.add_root(path)
        self._refresh_roots()
        log.info("album folder %s added", path)
        return path

    def set_follow_links_outside(self, follow: bool) -> None:
        """Remembers for this data directory whether scans follow, and the server serves, links leading
        outside the album folders (a running server re-reads it within seconds: follow_other_writers)."""
        self.store.set_meta({"follow_links_outside": "1" if follow else "0"})
        self.follow_links_outside = follow

    @property
    def roots(self) -> list[Path]:
        return [path for _, path in self.store.roots()]

    def _refresh_roots(self) -> None:
        self._real_roots = real_folders(self.roots)  # one assignment: serving threads see old or new, whole

    def _load_ann(self) -> None:
        """Sets up the ANN index at start-up, and saves it when it changed and no other process is indexing
        (the lock keeps SQLite still between reading it and recording the generation the file matches).
        In PostgreSQL the database keeps the index: it only has to exist."""
        if self.store.keeps_vector_index:
            self.ann = self.store.vector_index(self.model_id, self.embed_dim)
            if self.store.get_meta("ann_model_id") != self.model_id:  # what `clipalbum status` names
                self.store.set_meta({"ann_model_id": self.model_id})
            return
        try:
            with self._writer():
                self._ann_generation = self.store.generation()
                self.ann = self._current_ann()
                self._save_ann_if_writable()
        except IndexBusyError:
            log.info("another process is indexing this data directory; using the vector index in memory only")
            self._ann_generation = self.store.generation()  # rows written meanwhile are added at the next scan
            self.ann = self._current_ann()

    def _current_ann(self) -> AnnIndex:
        """The saved ANN index brought up to date with SQLite (the photos written since it was saved), or
        one rebuilt from SQLite when the file is missing, unreadable, of another model, or doesn't add up."""
        generation = self.store.generation()
        saved = self.store.get_meta("ann_generation")
        ann = None
        if self.store.get_meta("ann_model_id") == self.model_id and saved is not None and int(saved) <= generation:
            ann = AnnIndex.load(self.paths.ann_index, self.embed_dim)
        if ann is not None and int(saved) < generation:  # e.g. a scan was killed after its last checkpoint
            log.info("bringing the vector index up to date (generation %s -> %d)", saved, generation)
            self._catch_up(ann, since=int(saved))
        expected = self.store.vector_checksum(self.model_id)
        if ann is not None and ann.checksum() == expected:
            log.info("vector index loaded: %d photos", len(ann))
            return ann
        log.info("rebuilding the vector index from the database (%d photos)", expected[0])
        return AnnIndex.build(self.embed_dim, self.store.iter_vectors(self.model_id))

    def _catch_up(self, ann: AnnIndex, since: int) -> None:
        """Adds the vectors written after generation `since` and drops the photos no longer embedded."""
        for ids, vectors in self.store.iter_vectors(self.model_id, since=since):
            ann.add(ids, vectors)
        present = self.store.embedded_ids(self.model_id)
        ann.remove(np.setdiff1d(ann.keys(), present, assume_unique=True).tolist())

    def _checkpoint(self) -> None:
        """What a long scan does now and then: rebuild the lists if the album outgrew them, and save."""
        self.ann.maintain()
        self._save_ann()

    def _save_ann(self) -> None:
        # Save first, then record it: a crash in between leaves a mismatch, which means a rebuild, never a lie.
        if self.store.keeps_vector_index:
            return
        generation = self.store.generation()
        if (self.store.get_meta("ann_generation") == str(generation) and self.paths.ann_index.is_file()
                and self.store.get_meta("ann_model_id") == self.model_id):
            return  # nothing changed since the last save (a periodic rescan that found nothing new)
        self.ann.save(self.paths.ann_index)
        self.store.set_meta({"ann_generation": str(generation), "ann_model_id": self.model_id})
        self.paths.legacy_ann_index.unlink(missing_ok=True)  # an older version's index, replaced by this file

    def _save_ann_if_writable(self) -> None:
        """_save_ann, unless the data directory is full or read-only: SQLite holds everything, and the next
        start brings the file up to date (so a full disk still lets people search)."""
        try:
            self._save_ann()
        except (OSError, sqlite3.Error) as exc:
            if (problem := storage_problem(exc, self.paths.root)) is None:
                raise
            log.warning("vector index not saved: %s", problem)

    def _writer(self) -> AbstractContextManager[None]:
        """One indexer at a time across processes (the store's lock: a file lock, or advisory locks)."""
        return self.store.exclusive_writer()

    # -- indexing ------------------------------------------------------------------------------------------

    def index(self, progress: bool = False, reembed: bool = False,
              should_stop: Callable[[], bool] = lambda: False) -> IndexSummary:
        """Scans every album folder and brings the index up to date (blocking; searches keep working).
        `should_stop()`, asked after each photo, ends it early with what it has done (a server stopping).

        Raises IndexBusyError when a scan is already running.
        """
        if not self._scan_lock.acquire(blocking=False):
            raise IndexBusyError("an index scan is already running; its progress is in the status")
        try:
            with self._follow_lock:  # a catch-up that began before this scan ends before it; none starts during it
                pass
            with self._writer():
                self._refresh_settings()  # another process may have added a folder or changed the setting
                if self._follows_commits() and self.store.generation() != self._ann_generation:
                    # another process indexed meanwhile
                    log.info("taking in the photos another process indexed")
                    self._catch_up(self.ann, since=self._ann_generation)
                scan = Scan(self.store, self.ann, self.encoders, batch_size=self.batch_size or BATCH_SIZE,
                            infer_batch=self.infer_batch or INFER_BATCH, decode_threads=self.decode_threads,
                            on_progress=self._set_progress, checkpoint=self._checkpoint, should_stop=should_stop)
                try:
                    summary = scan.run(self.store.roots(), reembed=reembed,
                                       skip=frozenset({os.path.realpath(self.paths.root)}), bar=progress,
                                       follow_links_outside=self.follow_links_outside)
                except BaseException as exc:
                    problem = storage_problem(exc, self.paths.root)
                    self._set_progress(ScanProgress(running=False, phase="error", total=self.progress.total,
                                                    done=self.progress.done, failed=self.progress.failed,
                                                    started_at=self.progress.started_at, finished_at=time.time(),
                                                    message=f"scan stopped: {problem or repr(exc)}"))
                    if problem:
                        raise problem from exc
                    raise
                finally:
                    if scan.ann_in_sync:  # else the next start rebuilds it from SQLite
                        self.ann.maintain()
                        self._save_ann_if_writable()
                        self._ann_generation = self.store.generation()
                if summary.added or summary.updated or summary.removed:
                    self.store.refresh_statistics()
            log.info("%s", summary.describe())
            return summary
        finally:
            self._scan_lock.release()

    def _set_progress(self, progress: ScanProgress) -> None:
        self.progress = progress

    def follow_other_writers(self) -> None:
        """Takes in what another process (`clipalbum index`, a second server) changed since the last call:
        the photos it committed (into the in-memory ANN index), the album folders and the
        follow-links-outside setting. The server's BackgroundIndexer calls it about once a second, off the
        request path: a catch-up reads every embedded id and can rebuild the ANN index (seconds), which no
        search should wait for. Searches and status never call it; a Library opened for one CLI command is
        current as of Library.open. Cheap when nothing changed: three small reads (readers need no writer
        lock: WAL)."""
        self._refresh_settings()
        if self._scan_lock.locked() or not self._follow_lock.acquire(blocking=False):
            return  # this process is scanning and updates the ANN index itself, or another call is catching up
        try:
            if self._scan_lock.locked():  # a scan started meanwhile (index() waits for this lock first)
                return
            # Read the generation before the rows: rows committed in between are read now and again next
            # time, which AnnIndex.add makes harmless (it replaces a key it holds).
            generation = self.store.generation()
            if self._follows_commits() and generation != self._ann_generation:
                log.info("taking in the photos another process indexed (generation %d -> %d)",
                         self._ann_generation, generation)
                self._catch_up(self.ann, since=self._ann_generation)
                self.ann.maintain()
                self._ann_generation = generation
        finally:
            self._follow_lock.release()

    def _follows_commits(self) -> bool:
        """Whether this process keeps a vector index of its own that must take in other processes' commits
        (not in PostgreSQL, whose index is the database's)."""
        return not self.store.keeps_vector_index

    def _refresh_settings(self) -> None:
        """Re-reads what another process may have changed in this data directory: the album folders and
        whether links outside them are followed and served."""
        follow = self.store.get_meta("follow_links_outside") == "1"
        if follow != self.follow_links_outside:  # it widens or narrows what this server sends: say so
            log.warning("links outside the album folders are %s now (set by another clipalbum process)",
                        "followed and served" if follow else "no longer followed or served")
        self.follow_links_outside = follow
        self._refresh_roots()

    # -- switching models ----------------------------------------------------------------------------------

    def continue_switch(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Embeds photos with the model being switched to until all have it, then swaps models; stops early
        when `should_stop()` says so (asked between batches). True when the switch is done (or there is none)."""
        switch = self.switch
        if switch is None:
            return True
        if not switch.embed_more(should_stop) or should_stop():
            return False
        return self.finish_switch()

    def finish_switch(self) -> bool:
        """Builds the new model's vector index from its vectors, moves them into the photos in one transaction
        and makes the new model answer. Searches meanwhile go on with the old one; no scan runs meanwhile.
        False when a photo still needs the new model (changed since), which continue_switch then embeds."""
        switch = self.switch
        if switch is None:
            return True
        with self._scan_lock, self._follow_lock, self._writer():
            dim, model_id = switch.encoders.manifest.embed_dim, switch.model_id
            log.info("model switch: building the vector index of %s and swapping", model_id)
            if self.store.keeps_vector_index:
                ann = self.store.switch_vector_index(model_id, dim)  # the database's: built by the swap or after it
            else:
                ann = AnnIndex.build(dim, self.store.iter_switch_vectors(model_id))
            # From the commit on the old model's rows are gone: searches that find nothing meanwhile wait for
            # this lock and are asked again of the new model (_answer).
            with self._swap_lock:
                if not self.store.promote_staged(model_id):
                    return False
                self._serving = Serving(switch.encoders, ann)  # one assignment: one model or the other
            self._ann_generation = self.store.generation()
            if self.store.keeps_vector_index:
                self.store.set_meta({"ann_model_id": model_id})  # what `clipalbum status` names
                ann.maintain()  # lists for a large model, built concurrently while the graph or a scan answers
            self._save_ann_if_writable()
        log.info("model switch done: %s answers now (%d photos)", self.model_id, len(ann))
        return True

    # -- searching -----------------------------------------------------------------------------------------

    def search_text(self, q: str, k: int = 20, offset: int = 0, date_from: str | None = None,
                    date_to: str | None = None, sort: SortOrder = "relevance",
                    min_score: float | None = None) -> SearchResponse:
        """Photos that match a plain-English description, best first (or newest first with sort="date").
        Query arithmetic (`"beach" + "sunset" - "people"`) adds and subtracts descriptions; `min_score` leaves
        out weaker matches (every search takes it)."""
        started = time.perf_counter()
        if not isinstance(q, str) or not q.strip():
            raise InvalidQueryError("the query is empty; describe the photo you are looking for")
        if len(q) > MAX_QUERY_CHARS:
            raise InvalidQueryError(f"the query is {len(q)} characters long; the limit is {MAX_QUERY_CHARS}")
        window = _validate(k, offset, date_from, date_to, sort, min_score)
        return self._answer(lambda serving: self._respond(serving, self._text_vector(serving, q.strip()), k, offset,
                                                          window, sort, started, query=q.strip(), min_score=min_score))

    @staticmethod
    def _text_vector(serving: Serving, q: str) -> npt.NDArray[np.float32]:
        terms = parse_terms(q)
        vectors = serving.encoders.text.encode([words for _, words in terms])
        if len(terms) == 1:
            return vectors[0]
        combined = sum((weight * v for (weight, _), v in zip(terms, vectors)), np.zeros_like(vectors[0]))
        norm = float(np.linalg.norm(combined))
        if norm < 1e-4:
            raise InvalidQueryError("the descriptions in the query cancel each other out")
        return (combined / norm).astype(np.float32)

    def similar(self, photo_id: int, k: int = 20, offset: int = 0, date_from: str | None = None,
                date_to: str | None = None, sort: SortOrder = "relevance",
                min_score: float | None = None) -> SearchResponse:
        """Photos like an indexed one (its stored vector; the photo itself is left out)."""
        started = time.perf_counter()
        window = _validate(k, offset, date_from, date_to, sort, min_score)

        def ask(serving: Serving) -> SearchResponse:
            row_model, vector = self.store.vector(_known_id(photo_id))
            if vector is None or row_model != serving.encoders.manifest.model_id:
                record = self.photo(photo_id)  # NotFoundError for an unknown id
                why = f"could not be read ({record.error})" if record.status == "failed" else "is not embedded yet"
                raise NoVectorError(f"photo {photo_id} {why}; it has no vector to compare with")
            return self._respond(serving, vector, k, offset, window, sort, started, query=f"similar:{photo_id}",
                                 exclude=photo_id, min_score=min_score)

        return self._answer(ask)

    def search_image(self, data: bytes | BinaryIO, k: int = 20, offset: int = 0, date_from: str | None = None,
                     date_to: str | None = None, sort: SortOrder = "relevance", wait: float | None = None,
                     min_score: float | None = None) -> SearchResponse:
        """Photos like an uploaded photo (its bytes, or a file object holding them, read in place).

        Raises ImageDecodeError when it is not a readable image, ServerBusyError when the process's decode
        budget stays taken for `wait` seconds (None: as long as it takes). Decodes are bounded in memory by
        that budget whoever calls; how many uploads decode at once is the API's to bound (its UploadGate
        keeps the waiting off worker threads), and a CLI search decodes one."""
        started = time.perf_counter()
        window = _validate(k, offset, date_from, date_to, sort, min_score)
        check_upload_size(data)

        def ask(serving: Serving) -> SearchResponse:
            if not isinstance(data, bytes):
                data.seek(0)  # asked again after a model switch: read the upload from its start
            pixels = load_model_input(data, serving.encoders.manifest.image, wait=wait)
            vector = serving.encoders.image.encode(pixels[None])[0]
            return self._respond(serving, vector, k, offset, window, sort, started, query="image",
                                 min_score=min_score)

        return self._answer(ask)

    def _answer(self, ask: Callable[[Serving], SearchResponse]) -> SearchResponse:
        """ask(serving), and once more with the new model when a model switch ended during it: the old
        model's rows are gone from that moment, so its search finds nothing (or no vector for a photo)."""
        serving = self._serving
        try:
            response = ask(serving)
        except NoVectorError:
            if not self._swapped_since(serving):
                raise
            return ask(self._serving)
        if not response.results and self._swapped_since(serving):
            return ask(self._serving)
        return response

    def _swapped_since(self, serving: Serving) -> bool:
        """Whether another model answers now than `serving` (waiting for a swap under way to end)."""
        with self._swap_lock:
            return self._serving is not serving

    def _respond(self, serving: Serving, vector: npt.NDArray[np.float32], k: int, offset: int,
                 window: tuple[str | None, str | None], sort: SortOrder, started: float, query: str,
                 exclude: int | None = None, min_score: float | None = None) -> SearchResponse:
        if sort == "date":
            rows, scores = self._newest_relevant(serving, vector, k, offset, window, exclude, min_score)
        else:
            rows, scores = self._most_relevant(serving, vector, offset + k, window, exclude)
            rows, scores = _at_least(rows[offset:offset + k], scores[offset:offset + k], min_score)
        hits = [Hit(id=row.id, path=display(row.rel_path), root=display(row.root), score=round(float(score), 6),
                    width=row.width, height=row.height, taken_at=row.taken_at) for row, score in zip(rows, scores)]
        return SearchResponse(results=hits, took_ms=round((time.perf_counter() - started) * 1000, 3),
                              query=query, offset=offset, k=k)

    def _most_relevant(self, serving: Serving, vector: npt.NDArray[np.float32], need: int,
                       window: tuple[str | None, str | None], exclude: int | None
                       ) -> tuple[list[VectorRow], npt.NDArray[np.float32]]:
        """The `need` best photos, best first, scored exactly with SQLite's float32 vectors."""
        ids, _ = self._candidates(serving, vector, rerank_pool(need), window, exclude)
        return rerank(self.store.vector_rows(ids, serving.encoders.manifest.model_id), vector, need)

    def _newest_relevant(self, serving: Serving, vector: npt.NDArray[np.float32], k: int, offset: int,
                         window: tuple[str | None, str | None], exclude: int | None, min_score: float | None = None
                         ) -> tuple[list[VectorRow], list[float]]:
        """A page of the DATE_SORT_POOL most relevant photos (those scoring at least `min_score`), newest first
        (undated last, ties by score)."""
        ids, approx = _at_least(*self._candidates(serving, vector, DATE_SORT_POOL, window, exclude), min_score)
        taken = self.store.taken_at(ids)
        order = sorted(range(len(ids)), key=lambda i: (taken.get(ids[i]) is not None, taken.get(ids[i]) or "",
                                                       approx[i]), reverse=True)
        page = [ids[i] for i in order[offset:offset + k]]
        by_id = {row.id: row for row in self.store.vector_rows(page, serving.encoders.manifest.model_id)}
        rows = [by_id[i] for i in page if i in by_id]
        return rows, [float(row.vector @ vector) for row in rows]

    def _candidates(self, serving: Serving, vector: npt.NDArray[np.float32], wanted: int,
                    window: tuple[str | None, str | None], exclude: int | None) -> tuple[list[int], list[float]]:
        """Up to `wanted` photo ids in the date window, best first, with (approximate) scores."""
        ann, model_id = serving.ann, serving.encoders.manifest.model_id
        if window == (None, None):
            ids, scores = ann.search(vector, wanted + 1)
            keep = [j for j, i in enumerate(ids) if i != exclude][:wanted]
            return [ids[j] for j in keep], [scores[j] for j in keep]
        start, end = window
        in_window = self.store.count_taken_between(model_id, start, end)
        if in_window <= EXACT_FILTER_MAX:  # few photos in the window: score them all, exactly
            ids, vectors = self.store.vectors_taken_between(model_id, start, end)
            scores = vectors @ vector if len(ids) else np.zeros(0, dtype=np.float32)
            best = [j for j in np.argsort(-scores, kind="stable") if ids[j] != exclude][:wanted]
            return [int(ids[j]) for j in best], [float(scores[j]) for j in best]
        # Many: ask the ANN index for enough candidates that `wanted` of them fall in the window.
        count = math.ceil(wanted / (in_window / max(len(ann), 1)) * 1.5)
        while True:
            ids, scores = ann.search(vector, count)
            taken = self.store.taken_at(ids)
            keep = [j for j, i in enumerate(ids) if i != exclude and (t := taken.get(i))
                    and (not start or t >= start) and (not end or t < end)][:wanted]
            if len(keep) >= wanted or count >= len(ann):
                return [ids[j] for j in keep], [scores[j] for j in keep]
            count *= 2

    # -- records and status --------------------------------------------------------------------------------

    def photo(self, photo_id: int) -> PhotoRecord:
        record = self.store.photo(_known_id(photo_id), self.model_id)
        if record is None:
            raise NotFoundError(f"no photo with id {photo_id} in the index")
        return record

    def original_path(self, photo_id: int) -> Path:
        """The real path of the original to serve (the id comes from the index, never a path from a client).
        Raises NotFoundError unless it is a photo read as one, now inside an album folder."""
        return self.servable(self.photo(photo_id))

    def servable(self, record: PhotoRecord) -> Path:
        """What serving `record`'s original or thumbnail may open (server/containment.py decides)."""
        return servable_path(record, self._real_roots, allow_outside=self.follow_links_outside)

    def status(self, max_errors: int = 100) -> StatusResponse:
        serving = self._serving  # one model and its switch, whatever a swap does meanwhile
        encoders = serving.encoders
        status = index_status(self.store, encoders.manifest.model_id, encoders.manifest.embed_dim, self.progress,
                              max_errors, suggested_min_score(encoders.manifest))
        status.switch = None if serving.switch is None else serving.switch.progress
        return status

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.store.close()
        finally:
            release_blas_threads()


def index_status(store: Store, model_id: str, embed_dim: int, progress: ScanProgress,
                 max_errors: int = 100, min_score: float | None = None) -> StatusResponse:
    """Counts, albums and problems of the index in `store`, photos embedded by `model_id` counting as indexed
    (`clipalbum status` reads it without loading a model when none is there yet)."""
    counts = store.counts(model_id)
    pending = progress.total - progress.done if progress.running else counts["pending"]
    # Problems met walking the folders (links, loops, unreadable folders) first: they hide whole folders.
    walk = store.walk_problems()
    errors = [FailedFile(path=path, error=error) for path, error in walk[:max_errors]]
    errors += [FailedFile(path=display(Path(root) / rel), error=error)
               for root, rel, error in store.failures(max_errors - len(errors))]
    return StatusResponse(indexed=counts["indexed"], pending=max(pending, 0), failed=counts["failed"],
                          roots=[display(path) for _, path in store.roots()], model_id=model_id,
                          embed_dim=embed_dim, progress=progress, errors=errors,
                          errors_truncated=len(errors) < len(walk) + counts["failed"],
                          errors_total=len(walk) + counts["failed"], suggested_min_score=min_score)


def _at_least(items: list, scores: list[float], min_score: float | None) -> tuple[list, list[float]]:
    """`items` and their `scores`, those scoring below `min_score` left out (None: all)."""
    if min_score is None:
        return items, scores
    strong = [i for i, score in enumerate(scores) if score >= min_score]
    return [items[i] for i in strong], [scores[i] for i in strong]


def _answering_model(paths: DataPaths, store: Store, wanted: Encoders) -> Encoders | None:
    """The model that should keep answering while `wanted` embeds the photos in the background: the one the
    index's vectors come from, when it is not `wanted` and its bundle is still at hand (else None: `wanted`
    answers at once, from the photos it has embedded so far)."""
    current = store.get_meta("ann_model_id")
    if not current or current == wanted.manifest.model_id:
        return None
    if store.counts(current)["indexed"] == 0:
        return None
    bundle = bundle_of_model(paths.root, current)
    if bundle is None:
        log.warning("the index's photos were embedded by %s, whose bundle is gone: %s answers from the photos "
                    "it has embedded while it embeds the rest", current, wanted.manifest.model_id)
        return None
    try:
        encoders = load_encoders(bundle)
    except ClipalbumError as exc:
        log.warning("cannot load %s to answer during the model switch (%s); %s answers at once", bundle, exc,
                    wanted.manifest.model_id)
        return None
    if encoders.manifest.model_id != current:
        return None
    log.info("switching models: %s answers while %s embeds the photos in the background", current,
             wanted.manifest.model_id)
    return encoders


def _known_id(photo_id: int) -> int:
    """`photo_id` as an int that can be a photo's id; NotFoundError for one that cannot (<1 or over 64 bits)."""
    try:
        value = operator.index(photo_id)  # ints and numpy integers; not floats or strings
    except TypeError:
        value = 0
    if not 1 <= value <= MAX_PHOTO_ID:
        raise NotFoundError(f"no photo with id {photo_id!r} in the index (ids are 1 to {MAX_PHOTO_ID})")
    return value


def check_upload_size(data: bytes | BinaryIO) -> None:
    """Refuses an empty upload or one over MAX_UPLOAD_BYTES; a file object is left at its start."""
    if isinstance(data, bytes):
        size = len(data)
    else:  # (tell(), not seek()'s result: SpooledTemporaryFile.seek returns None before Python 3.11)
        data.seek(0, os.SEEK_END)
        size = data.tell()
        data.seek(0)
    if not size:
        raise InvalidQueryError("the uploaded file is empty")
    if size > MAX_UPLOAD_BYTES:
        raise InvalidQueryError(f"the uploaded file is {size / 1e6:.1f} MB; the limit is "
                                f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB")


def _validate(k: int, offset: int, date_from: str | None, date_to: str | None,
              sort: str, min_score: float | None = None) -> tuple[str | None, str | None]:
    """Checks paging, dates, sort and the score cut-off; returns the capture-time window as ISO bounds
    [start, end)."""
    if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                  or not -1.0 <= min_score <= 1.0):
        raise InvalidQueryError(f"min_score must be between -1 and 1 (a cosine similarity), got {min_score!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {k!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidQueryError(f"offset must be between 0 and {MAX_OFFSET}, got {offset!r}")
    if sort not in ("relevance", "date"):
        raise InvalidQueryError(f"sort must be 'relevance' or 'date', got {sort!r}")
    start = _parse_date("date_from", date_from)
    end = _parse_date("date_to", date_to)
    if start and end and start > end:
        raise InvalidQueryError(f"date_from {date_from} is after date_to {date_to}")
    # date_to is inclusive: the bound is the end of that day, "YYYY-MM-DDT24", which sorts after every time on
    # it and before the next day (ISO strings compare as times) and, unlike the day after, always exists.
    return start.isoformat() if start else None, f"{end.isoformat()}T24" if end else None


def _parse_date(name: str, value: str | None) -> date | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise InvalidQueryError(f"{name} must be a date like 2024-07-31, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidQueryError(f"{name} {value!r} is not a valid date ({exc})") from exc


def rerank_pool(need: int) -> int:
    """How many ANN candidates to fetch for `need` results: a few more, which the exact re-rank orders."""
    return need + max(10, need // 4)


def rerank(rows: list[VectorRow], vector: npt.NDArray[np.float32], need: int
           ) -> tuple[list[VectorRow], npt.NDArray[np.float32]]:
    """Exact cosine scores (vectors are unit length) and the `need` best rows, best first."""
    if not rows:
        return [], np.zeros(0, dtype=np.float32)
    scores = np.stack([r.vector for r in rows]) @ np.asarray(vector, dtype=np.float32)
    best = np.argsort(-scores, kind="stable")[:need]
    return [rows[i] for i in best], scores[best]
