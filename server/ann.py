"""The approximate-nearest-neighbour index (usearch, cosine, key = photo id): derived from SQLite, rebuildable."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
# Import order matters: usearch loads NumKong with RTLD_GLOBAL, and onnxruntime imported *after* that
# segfaults (usearch 2.26 / numkong 7.8 / onnxruntime 1.32 on Linux). Loading ORT first is safe.
import onnxruntime  # noqa: F401,I001
from usearch.index import Index

log = logging.getLogger(__name__)

# f16 halves the memory of f32 for a cosine index with no measurable ranking loss at our dims; the
# exact float32 vectors stay in SQLite and the search re-ranks candidates with them.
ANN_DTYPE = "f16"
CONNECTIVITY = 16
EXPANSION_ADD = 128
# Text queries sit away from the photo vectors (the modality gap), where a graph search finds fewer of the
# true neighbours: on real-geometry vectors at 100k (bench/ann_recall.py, 30 candidates re-ranked) expansion
# 128 found 0.86 of the true top 20 for caption queries, 512 0.97, 1024 0.99 in 2.7 ms (p99 4.4 ms); image
# queries 1.0 at each.
EXPANSION_SEARCH = 1024
# Up to this many photos a brute-force scan of the stored vectors costs little (0.9 ms at 20k, 2.8 ms at
# 50k on one core here) and never misses a neighbour; larger albums take the HNSW graph.
EXACT_SEARCH_MAX = 50_000


class AnnIndex:
    """A usearch index behind a lock: scans add and remove while the API searches."""

    def __init__(self, ndim: int, index: Index | None = None) -> None:
        self.ndim = ndim
        self._index = index or Index(ndim=ndim, metric="cos", dtype=ANN_DTYPE, connectivity=CONNECTIVITY,
                                     expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
        self._lock = threading.RLock()
        self.removed = 0  # keys removed since built or loaded: usearch only marks them, so they cost memory

    @classmethod
    def load(cls, path: Path, ndim: int) -> "AnnIndex | None":
        """Loads a saved index into memory; None when it is missing, unreadable or of another dimension."""
        if not Path(path).is_file():
            return None
        try:
            index = Index.restore(str(path), view=False)
        except Exception as exc:  # usearch raises plain RuntimeError/ValueError for damaged files
            log.warning("cannot read the vector index %s (%s); it will be rebuilt", path, exc)
            return None
        if index is None or index.ndim != ndim:
            log.info("vector index %s has %s dims, the model has %d; it will be rebuilt", path,
                     getattr(index, "ndim", "?"), ndim)
            return None
        index.expansion_search = EXPANSION_SEARCH
        return cls(ndim, index)

    @classmethod
    def build(cls, ndim: int, chunks: Iterable[tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]]
              ) -> "AnnIndex":
        ann = cls(ndim)
        for ids, vectors in chunks:
            ann.add(ids, vectors)
        return ann

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def keys(self) -> npt.NDArray[np.uint64]:
        with self._lock:
            return np.asarray(self._index.keys[:], dtype=np.uint64)  # a slice is a fast ndarray copy

    def checksum(self) -> tuple[int, int]:
        """(count, sum of keys), compared with Store.vector_checksum at start-up."""
        keys = self.keys()
        return int(keys.size), int(keys.sum(dtype=np.uint64)) if keys.size else 0

    def add(self, ids: npt.ArrayLike, vectors: npt.NDArray[np.float32]) -> None:
        keys = np.asarray(ids, dtype=np.uint64)
        if keys.size == 0:
            return
        with self._lock:
            present = [k for k in keys.tolist() if self._index.contains(k)]
            if present:  # an updated photo: replace its vector
                self._index.remove(np.asarray(present, dtype=np.uint64))
                self.removed += len(present)
            self._index.add(keys, np.ascontiguousarray(vectors, dtype=np.float32))

    def remove(self, ids: Iterable[int]) -> None:
        keys = [int(k) for k in ids]
        if not keys:
            return
        with self._lock:
            self.removed += int(np.sum(self._index.remove(np.asarray(keys, dtype=np.uint64))))

    def search(self, vector: npt.NDArray[np.float32], count: int) -> tuple[list[int], list[float]]:
        """Up to `count` nearest photo ids and their approximate cosine similarities, best first."""
        with self._lock:
            size = len(self._index)
            if size == 0 or count <= 0:
                return [], []
            matches = self._index.search(np.asarray(vector, dtype=np.float32), min(count, size),
                                         exact=size <= EXACT_SEARCH_MAX)
        return [int(k) for k in matches.keys], [1.0 - float(d) for d in matches.distances]

    def save(self, path: Path) -> None:
        """Atomic save: write a temporary file, fsync it, rename over the old one, fsync the folder."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with self._lock:
                _reserve(tmp, self._index.serialized_length)
                try:
                    self._index.save(str(tmp))
                except RuntimeError as exc:  # usearch says only "Failed to serialize into stream"
                    raise OSError(errno.EIO, f"cannot write the vector index {tmp}: {exc}") from exc
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a partial file on a full disk would only take more of it
            raise
        try:
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError:  # some platforms can't open folders; the rename is still atomic
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reserve(path: Path, size: int) -> None:
    """Creates `path` with `size` bytes allocated, so a full disk fails here with ENOSPC (a clear error)."""
    with open(path, "wb") as f:
        if not hasattr(os, "posix_fallocate"):  # macOS
            return
        try:
            os.posix_fallocate(f.fileno(), 0, max(1, size))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate; usearch's own write reports failures
