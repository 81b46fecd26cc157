"""The approximate-nearest-neighbour index: photo vectors as int8 codes in inverted lists (IVF), keyed by
photo id. Derived from SQLite and rebuildable; the search re-ranks its candidates with SQLite's float32
vectors.

Up to EXACT_SEARCH_MAX photos every code is scored (usearch's exact int8 kernel), so nothing is missed.
Beyond, the photos are split into lists around spherical k-means centroids; a query scores the centroids
and then every code of the PROBES nearest lists. Text queries sit far from the photo vectors (the
image-text modality gap), which is where graph indexes lose the true neighbours: on real-geometry vectors
(bench/ann_recall.py) usearch's HNSW graph found 0.61 of the true top 20 of caption queries at 1M photos
and took 14 minutes to build on 2 cores; these lists found 0.98 (PROBES 32) in 3 ms, built in 75 s, in a
quarter of the graph's memory (1 byte per dimension).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
# Import order matters: usearch loads NumKong with RTLD_GLOBAL, and onnxruntime imported *after* that
# segfaults (usearch 2.26 / numkong 7.8 / onnxruntime 1.32 on Linux). Loading ORT first is safe.
import onnxruntime  # noqa: F401,I001
from usearch.index import MetricKind, search as exact_search

from clipalbum.server.annfile import read_index, write_index
from clipalbum.server.blasthreads import hold_one_blas_thread, release_blas_threads
from clipalbum.server.clustering import SAMPLE_PER_LIST, nearest_centroid, train_centroids

log = logging.getLogger(__name__)

# Up to this many photos every code is scored (2-4 ms on one core here), beyond that the lists.
EXACT_SEARCH_MAX = 20_000
# Lists scanned per query. Recall@20 of caption queries after the re-rank (bench/ann_recall.py, real
# geometry) depends on the probes far more than on the number of lists: 0.98 at 32 probes and 0.99 at 48 for
# 100k photos in 1024 lists; 0.98 at 32 for 1M in 4096 lists (photo queries 0.996).
PROBES = 48
SCAN_CHUNK = 512  # probed rows converted to float32 and scored at a time (512 KB of 256-d floats)
# Rebuild once this many (and a fifth of the index) were removed: removed codes only stop being scored.
COMPACT_MIN_REMOVED = 1000


def list_count(size: int) -> int:
    """How many inverted lists suit `size` photos: one (an exact scan) up to EXACT_SEARCH_MAX, then about
    4 * sqrt(size), a power of two: 1024 at 100k photos, 4096 at 1M (some 250 photos a list)."""
    if size <= EXACT_SEARCH_MAX:
        return 1
    return 2 ** round(math.log2(4 * math.sqrt(size)))


def quantize(vectors: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """int8 codes (each row scaled to use the full range) and 1 / |code| per row, which turns an int8 dot
    product back into a cosine."""
    v = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    peak = np.abs(v).max(axis=1, keepdims=True)
    peak[peak == 0] = 1.0
    codes = np.clip(np.rint(v * (127.0 / peak)), -127, 127).astype(np.int8)
    norms = np.linalg.norm(codes.astype(np.float32), axis=1)
    return codes, np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)


def dequantize(codes: npt.NDArray[np.int8], scales: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Unit vectors back from codes (within int8 rounding of the originals)."""
    return codes.astype(np.float32) * scales[:, None]


class _KeyMap:
    """Photo id -> slot as two sorted arrays (12 bytes a photo, where a dict would take ~100). New photos
    have the highest ids, so adding is mostly an append. A removed photo keeps its entry with slot -1."""

    def __init__(self, keys: npt.NDArray[np.uint64] | None = None, slots: npt.NDArray[np.int64] | None = None):
        keys = np.zeros(0, dtype=np.uint64) if keys is None else np.asarray(keys, dtype=np.uint64)
        slots = np.zeros(0, dtype=np.int64) if slots is None else np.asarray(slots, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self._keys, self._slots, self._size = keys[order], slots[order], len(keys)

    def has_duplicates(self) -> bool:
        return bool(self._size > 1 and np.any(self._keys[1:self._size] == self._keys[:self._size - 1]))

    def _positions(self, keys: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Where each key is or would go in the sorted keys (clipped to the last entry), and whether it is there."""
        if not self._size:
            return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        known = self._keys[:self._size]
        pos = np.minimum(np.searchsorted(known, keys), self._size - 1)
        return pos, known[pos] == keys

    def find(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Each key's slot, -1 for a key not in the index."""
        pos, hit = self._positions(keys)
        slots = np.full(len(keys), -1, dtype=np.int64)
        slots[hit] = self._slots[pos[hit]]
        return slots

    def set(self, keys: npt.NDArray[np.uint64], slots: npt.NDArray[np.int64]) -> None:
        """Points sorted, unique `keys` at `slots` (-1: removed)."""
        pos, hit = self._positions(keys)
        known = self._keys[:self._size]
        self._slots[pos[hit]] = slots[hit]
        new_keys, new_slots = keys[~hit], slots[~hit]
        if not len(new_keys):
            return
        if self._size and new_keys[0] < known[-1]:  # rare: an older id comes back (another process's scan)
            merged_keys = np.concatenate([known, new_keys])
            merged_slots = np.concatenate([self._slots[:self._size], new_slots])
            order = np.argsort(merged_keys, kind="stable")
            self._keys, self._slots, self._size = merged_keys[order], merged_slots[order], len(merged_keys)
            return
        end = self._size + len(new_keys)
        if end > len(self._keys):
            capacity = max(end, len(self._keys) * 3 // 2, 1024)
            self._keys = _grown(self._keys, self._size, capacity)
            self._slots = _grown(self._slots, self._size, capacity)
        self._keys[self._size:end], self._slots[self._size:end] = new_keys, new_slots
        self._size = end


def _grown(array: np.ndarray, used: int, capacity: int) -> np.ndarray:
    """A copy of `array[:used]` with room for `capacity` rows (the untouched rest costs no memory yet)."""
    out = np.empty((capacity, *array.shape[1:]), dtype=array.dtype)
    out[:used] = array[:used]
    return out


class AnnIndex:
    """int8 codes in slots (append-only; a removed or replaced photo's slot is marked dead until the next
    rebuild), inverted lists of slots, and a key map. One writer at a time (scans, catch-ups, rebuilds) under
    `_write_lock`; what searches read is swapped or appended under `_lock`, held for microseconds, so
    indexing and rebuilds never hold a search up for long."""

    def __init__(self, ndim: int, centroids: npt.NDArray[np.float32] | None = None) -> None:
        self.ndim = ndim
        self.probes: int | None = None  # lists scanned per query; None: PROBES (the benches sweep it)
        self.removed = 0  # dead slots: removed or replaced photos, until the next rebuild
        self._lock = threading.RLock()
        self._write_lock = threading.RLock()
        self._centroids = (np.zeros((1, ndim), dtype=np.float32) if centroids is None
                           else np.ascontiguousarray(centroids, dtype=np.float32))
        self._codes = np.empty((0, ndim), dtype=np.int8)
        self._scales = np.empty(0, dtype=np.float32)
        self._keys = np.empty(0, dtype=np.uint64)
        self._alive = np.empty(0, dtype=bool)
        self._list = np.empty(0, dtype=np.int32)
        self._used = 0  # slots written
        self._live = 0  # slots alive: the photos in the index
        self._map = _KeyMap()
        self._members: list[npt.NDArray[np.int64]] = [np.empty(0, dtype=np.int64) for _ in self._centroids]
        self._fill = np.zeros(len(self._centroids), dtype=np.int64)

    # -- building, loading, saving -------------------------------------------------------------------------

    @classmethod
    def build(cls, ndim: int, chunks: Iterable[tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]]
              ) -> "AnnIndex":
        """An index of every (ids, vectors) chunk, with lists trained for its size."""
        ann = cls(ndim)
        started = last_log = time.monotonic()
        for ids, vectors in chunks:
            ann.add(ids, vectors)
            if time.monotonic() - last_log > 5:
                log.info("vector index: %d vectors read (%.0f s)", len(ann), time.monotonic() - started)
                last_log = time.monotonic()
        ann.maintain()
        return ann

    @classmethod
    def load(cls, path: Path, ndim: int) -> "AnnIndex | None":
        """The index saved at `path`; None when it is missing, damaged or of another dimension."""
        arrays = read_index(path, ndim)
        if arrays is None:
            return None
        ann = cls(ndim, arrays.centroids)
        ann._set_rows(arrays.codes, arrays.scales, arrays.keys, arrays.lists)
        if ann._map.has_duplicates():
            log.warning("the vector index %s lists a photo twice; it will be rebuilt", path)
            return None
        return ann

    def save(self, path: Path) -> None:
        """Writes the live photos to `path` atomically (searches go on meanwhile; writers wait)."""
        with self._write_lock:
            rows = np.flatnonzero(self._alive[:self._used])
            rows = rows[np.argsort(self._list[rows], kind="stable")]  # list by list, as _set_rows keeps them
            write_index(path, self.ndim, rows, self._keys, self._list, self._scales, self._centroids, self._codes)

    def maintain(self) -> bool:
        """Rebuilds the lists when removed photos pile up, or when the index outgrew them (list_count asks for
        more: about 4x the photos they were trained for, or never trained and past EXACT_SEARCH_MAX). True when
        it rebuilt."""
        with self._write_lock:
            lists = len(self._centroids)
            retrain = lists < list_count(self._live)
            if not retrain and self.removed <= max(COMPACT_MIN_REMOVED, self._live // 5):
                return False
            self._rebuild(retrain)
            return True

    def _rebuild(self, retrain: bool) -> None:
        # One BLAS thread: OpenBLAS's second thread spins between products and starved the searches (at 1M
        # photos, searches during a rebuild: p99 136 ms, worst 349 ms; with one thread 8 ms and 26 ms, and
        # the rebuild itself took 118 s instead of 187 s; bench/ann_under_writes.py).
        hold_one_blas_thread()  # shared with open libraries: the last to let go restores the limits
        try:
            self._rebuild_now(retrain)
        finally:
            release_blas_threads()

    def _rebuild_now(self, retrain: bool) -> None:
        started = time.monotonic()
        rows = np.flatnonzero(self._alive[:self._used])
        if retrain:
            lists = list_count(len(rows))
            log.info("vector index: training %d lists for %d photos", lists, len(rows))
            sample = rows[np.random.default_rng(0).choice(len(rows), min(len(rows), lists * SAMPLE_PER_LIST),
                                                          replace=False)]
            centroids = (train_centroids(dequantize(self._codes[sample], self._scales[sample]), lists) if lists > 1
                         else np.zeros((1, self.ndim), dtype=np.float32))
            owner = self._assign(rows, centroids)
        else:
            centroids, owner = self._centroids, self._list[rows]
        order = np.argsort(owner, kind="stable")
        rows, owner = rows[order], owner[order]
        fresh = AnnIndex(self.ndim, centroids)
        fresh._set_rows(self._codes[rows], self._scales[rows], self._keys[rows], owner)
        with self._lock:
            self.__dict__.update({name: getattr(fresh, name) for name in (
                "_centroids", "_codes", "_scales", "_keys", "_alive", "_list", "_used", "_live", "_map",
                "_members", "_fill")})
            self.removed = 0
        log.info("vector index rebuilt: %d photos in %d lists (%.1f s)", self._live, len(centroids),
                 time.monotonic() - started)

    def _assign(self, rows: npt.NDArray[np.int64], centroids: npt.NDArray[np.float32]) -> npt.NDArray[np.int32]:
        """Each of the slots `rows`'s nearest centroid, a chunk at a time (no second copy of the codes)."""
        if len(centroids) == 1:
            return np.zeros(len(rows), dtype=np.int32)
        out = np.empty(len(rows), dtype=np.int32)
        step, last_log = 65_536, time.monotonic()
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            out[start:start + step] = nearest_centroid(dequantize(self._codes[chunk], self._scales[chunk]), centroids)
            if time.monotonic() - last_log > 5:
                log.info("vector index: %d of %d photos placed in lists", min(start + step, len(rows)), len(rows))
                last_log = time.monotonic()
        return out

    def _set_rows(self, codes: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], keys: npt.NDArray[np.uint64],
                  lists: npt.NDArray[np.int32]) -> None:
        """Fills an empty index with these rows, stored list by list: a query's lists are then a few
        contiguous runs of memory (gathering 14k scattered codes of a million took 3.3 ms)."""
        lists = np.asarray(lists, dtype=np.int32)
        if len(self._centroids) > 1 and np.any(lists[1:] < lists[:-1]):
            order = np.argsort(lists, kind="stable")
            codes, scales, keys, lists = codes[order], scales[order], keys[order], lists[order]
        count = len(keys)
        self._codes, self._scales, self._keys, self._list = codes, scales, keys, lists
        self._alive = np.ones(count, dtype=bool)
        self._used = self._live = count
        self._map = _KeyMap(keys, np.arange(count, dtype=np.int64))
        if len(self._centroids) > 1:
            counts = np.bincount(lists, minlength=len(self._centroids))
            ends = np.cumsum(counts)
            self._members = [np.arange(end - n, end, dtype=np.int64) for n, end in zip(counts, ends)]
            self._fill = counts.astype(np.int64)

    # -- changes -------------------------------------------------------------------------------------------

    def add(self, ids: npt.ArrayLike, vectors: npt.NDArray[np.float32]) -> None:
        """Adds photos; a photo already present gets its new vector (the last one when given twice)."""
        keys = np.asarray(ids, dtype=np.uint64).reshape(-1)
        if keys.size == 0:
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(keys), self.ndim)
        keys, last = np.unique(keys[::-1], return_index=True)  # sorted, each key's last vector
        vectors = vectors[len(vectors) - 1 - last]
        codes, scales = quantize(vectors)
        with self._write_lock:
            lists = (nearest_centroid(dequantize(codes, scales), self._centroids) if len(self._centroids) > 1
                     else np.zeros(len(keys), dtype=np.int32))
            old = self._map.find(keys)
            start, end = self._used, self._used + len(keys)
            if end > len(self._keys):
                self._grow(end)
            slots = np.arange(start, end, dtype=np.int64)
            with self._lock:  # rows past _used are invisible to searches until _used moves
                self._codes[start:end], self._scales[start:end], self._keys[start:end] = codes, scales, keys
                self._list[start:end] = lists
                self._alive[start:end] = True
                replaced = old[old >= 0]
                self._alive[replaced] = False
                if len(self._centroids) > 1:
                    for list_no in np.unique(lists):
                        self._add_members(int(list_no), slots[lists == list_no])
                self._used = end
                self._live += len(keys) - len(replaced)
                self.removed += len(replaced)
            self._map.set(keys, slots)

    def _grow(self, needed: int) -> None:
        """New arrays with room for `needed` slots, copied while searches read the old ones."""
        capacity = max(needed, len(self._keys) * 3 // 2, 1024)
        grown = {name: _grown(getattr(self, name), self._used, capacity)
                 for name in ("_codes", "_scales", "_keys", "_alive", "_list")}
        with self._lock:
            self.__dict__.update(grown)

    def _add_members(self, list_no: int, slots: npt.NDArray[np.int64]) -> None:
        members, fill = self._members[list_no], int(self._fill[list_no])
        if fill + len(slots) > len(members):
            members = _grown(members, fill, max(fill + len(slots), 2 * len(members), 16))
            self._members[list_no] = members
        members[fill:fill + len(slots)] = slots
        self._fill[list_no] = fill + len(slots)

    def remove(self, ids: Iterable[int]) -> None:
        keys = np.unique(np.asarray([int(k) for k in ids], dtype=np.uint64))
        if not keys.size:
            return
        with self._write_lock:
            slots = self._map.find(keys)
            present = slots >= 0
            with self._lock:
                self._alive[slots[present]] = False
                self._live -= int(present.sum())
                self.removed += int(present.sum())
            self._map.set(keys[present], np.full(int(present.sum()), -1, dtype=np.int64))

    # -- reading -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live

    def keys(self) -> npt.NDArray[np.uint64]:
        with self._lock:
            return self._keys[:self._used][self._alive[:self._used]]

    def checksum(self) -> tuple[int, int]:
        """(count, sum of keys), compared with Store.vector_checksum at start-up."""
        keys = self.keys()
        return int(keys.size), int(keys.sum(dtype=np.uint64)) if keys.size else 0

    def approximate_vectors(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The stored (int8) vectors of `ids`, as unit vectors; KeyError for an id not in the index."""
        keys = np.asarray(ids, dtype=np.uint64).reshape(-1)
        with self._write_lock:
            slots = self._map.find(keys)
            if np.any(slots < 0):
                raise KeyError(f"not in the vector index: {keys[slots < 0][:5].tolist()}")
            return dequantize(self._codes[slots], self._scales[slots])

    def search(self, vector: npt.NDArray[np.float32], count: int) -> tuple[list[int], list[float]]:
        """Up to `count` nearest photo ids and their approximate cosine similarities, best first."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        with self._lock:
            live, used = self._live, self._used
            if live == 0 or count <= 0:
                return [], []
            count = min(count, live)
            codes, scales, keys, alive = self._codes, self._scales, self._keys, self._alive
            if len(self._centroids) == 1 or live <= EXACT_SEARCH_MAX:
                rows = None  # every slot; dead ones are dropped after the scan
            else:
                rows = self._probed_rows(query, count)
                rows = rows[alive[rows]]
        # Scored outside the lock: slots below `used` never change, and a swap leaves these arrays whole.
        if rows is None:
            found, scores = _scan_all(codes[:used], alive, quantize(query[None])[0][0], count, used - live)
        else:
            found, scores = _scan_rows(codes, scales, rows, query, count)
        return [int(k) for k in keys[found]], scores.tolist()

    def _probed_rows(self, query: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.int64]:
        """The slots of the lists nearest `query`: `probes` of them, more when they hold under 2 x count
        photos (a date-window search asks for many)."""
        order = np.argsort(-(self._centroids @ query))
        held = np.cumsum(self._fill[order])
        lists = max(self.probes or PROBES, int(np.searchsorted(held, 2 * count)) + 1)
        return np.concatenate([self._members[n][:self._fill[n]] for n in order[:lists]])


def _scan_all(codes: npt.NDArray[np.int8], alive: npt.NDArray[np.bool_], query: npt.NDArray[np.int8], count: int,
              dead: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The `count` best live slots of all `codes`, by usearch's exact int8 cosine (it took 6-11 ms for 50k
    codes on one core here, numpy's float conversion 11 ms); `dead` more are asked for and dropped."""
    matches = exact_search(codes, query, min(count + dead, len(codes)), MetricKind.Cos, exact=True, threads=1)
    found = np.asarray(matches.keys, dtype=np.int64)
    keep = alive[found]
    return found[keep][:count], 1.0 - np.asarray(matches.distances, dtype=np.float32)[keep][:count]


def _scan_rows(codes: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], rows: npt.NDArray[np.int64],
               query: npt.NDArray[np.floating], count: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The `count` best of the slots `rows` (the probed lists' photos, some 11k of a million): gathered as
    float32 and scored SCAN_CHUNK rows at a time, which beat usearch's kernel on gathered rows. The chunk
    stays in the CPU cache: a search at 1M took 3.1 ms against 4.5 ms with one gather, one conversion and one
    product over all 11k rows, which move 12 MB of floats through memory twice (100k: 1.6 against 1.9 ms)."""
    query = query.astype(np.float32, copy=False)  # np.dot(out=) needs the operands' type to match `scores`
    if not len(rows):
        return rows, np.zeros(0, dtype=np.float32)
    scores = np.empty(len(rows), dtype=np.float32)
    chunk = np.empty((min(SCAN_CHUNK, len(rows)), codes.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), SCAN_CHUNK):
        part = rows[start:start + SCAN_CHUNK]
        floats = chunk[:len(part)]
        floats[...] = codes[part]
        np.dot(floats, query, out=scores[start:start + len(part)])
    scores *= scales[rows]
    best = np.argpartition(-scores, count - 1)[:count] if count < len(rows) else np.arange(len(rows))
    best = best[np.argsort(-scores[best], kind="stable")]
    return rows[best], scores[best]
