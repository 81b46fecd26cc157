"""Spherical k-means for the vector index's inverted lists: centroids of unit vectors, and which is nearest."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

SAMPLE_PER_LIST = 50  # training vectors per centroid: enough for stable lists, and 4096 lists train in ~1 min
ITERATIONS = 10
# Rows scored against every centroid per matrix product. Small, because OpenBLAS runs one product at a time:
# a search's own products wait for the one in progress (with 4096 rows a training stalled searches up to
# 0.48 s at 1M photos; bench/ann_under_writes.py).
ASSIGN_CHUNK = 256


def nearest_centroid(vectors: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32],
                     progress: Callable[[int], None] | None = None) -> npt.NDArray[np.int32]:
    """The index of each vector's most similar centroid (vectors and centroids unit length)."""
    out = np.empty(len(vectors), dtype=np.int32)
    for start in range(0, len(vectors), ASSIGN_CHUNK):
        out[start:start + ASSIGN_CHUNK] = np.argmax(vectors[start:start + ASSIGN_CHUNK] @ centroids.T, axis=1)
        if progress:
            progress(min(start + ASSIGN_CHUNK, len(vectors)))
    return out


def train_centroids(sample: npt.NDArray[np.float32], lists: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """`lists` unit centroids of `sample` (rows unit length) by spherical k-means, seeded: the same sample
    gives the same lists. A centroid left empty restarts at a random sample vector."""
    rng = np.random.default_rng(seed)
    lists = min(lists, len(sample))
    centroids = sample[rng.choice(len(sample), lists, replace=False)].astype(np.float32)
    started = last_log = time.monotonic()
    for iteration in range(ITERATIONS):
        owner = nearest_centroid(sample, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, owner, sample)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] < 1e-6
        sums[empty] = sample[rng.choice(len(sample), int(empty.sum()), replace=False)]
        norms[empty] = 1.0
        centroids = (sums / norms).astype(np.float32)
        if time.monotonic() - last_log > 5:
            log.info("vector index: training %d lists, iteration %d/%d (%.0f s)", lists, iteration + 1,
                     ITERATIONS, time.monotonic() - started)
            last_log = time.monotonic()
    return centroids
