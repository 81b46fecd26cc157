"""First-pass search methods side by side on real-geometry vectors: recall@k against exact search, latency,
memory. In-process, one core set (2 threads), the same queries for every method; prints JSON.

Gallery: the real photo views of bench/real_geometry.py extended to each size by its generator. Queries:
flickr8k-dev captions (text, the hard case: the modality gap) and gallery photos (image, "more like this").
Every method ends with the same exact re-rank of its candidates with float32 vectors, as the server does.

    .venv/bin/python bench/ann_recall.py [--sizes 100000,1000000] [--methods ...] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import numpy.typing as npt
import onnxruntime  # noqa: F401  (before usearch: see server/ann.py)
from usearch.index import Index, MetricKind, search

from real_geometry import exact_top, extended, overlap, real_vectors, rerank
from serving import resolve_model

K = 20


def to_i8(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int8]:
    return np.clip(np.round(x * 127 / np.abs(x).max()), -127, 127).astype(np.int8)


class Method:
    name = ""

    def memory_mb(self) -> float:
        return 0.0

    def candidates(self, query: npt.NDArray[np.float32], pool: int) -> npt.NDArray:
        raise NotImplementedError


class Graph(Method):
    def __init__(self, gallery: npt.NDArray[np.float32], dtype: str, connectivity: int, expansion: int) -> None:
        self.name = f"hnsw-{dtype}-m{connectivity}-ef{expansion}"
        self.index = Index(ndim=gallery.shape[1], metric="cos", dtype=dtype, connectivity=connectivity,
                           expansion_add=128, expansion_search=expansion)
        started = time.perf_counter()
        for s in range(0, len(gallery), 100_000):
            self.index.add(np.arange(s, min(s + 100_000, len(gallery)), dtype=np.uint64), gallery[s:s + 100_000],
                           threads=2)
            print(f"\r  {self.name}: {min(s + 100_000, len(gallery))} added", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        self.build_s = round(time.perf_counter() - started, 1)
        self.shift: npt.NDArray[np.float32] | None = None  # added to the query: a move across the modality gap

    def memory_mb(self) -> float:
        return round(self.index.memory_usage / 1e6, 1)

    def candidates(self, query: npt.NDArray[np.float32], pool: int) -> npt.NDArray:
        if self.shift is not None:
            query = query + self.shift
        return np.asarray(self.index.search(query, pool, threads=1).keys, dtype=np.int64)


class Flat(Method):
    """usearch's multi-threaded exact scan over i8 or f16 copies of the vectors."""

    def __init__(self, gallery: npt.NDArray[np.float32], dtype: str) -> None:
        self.name = f"flat-{dtype}"
        self.data = to_i8(gallery) if dtype == "i8" else gallery.astype(np.float16)

    def memory_mb(self) -> float:
        return round(self.data.nbytes / 1e6, 1)

    def candidates(self, query: npt.NDArray[np.float32], pool: int) -> npt.NDArray:
        q = to_i8(query[None])[0] if self.data.dtype == np.int8 else query.astype(np.float16)
        return np.asarray(search(self.data, q, pool, MetricKind.Cos, exact=True, threads=2).keys, dtype=np.int64)


class Binary(Method):
    """Sign bits of (vector - mean photo vector), Hamming scan, then an i8 re-score of the best `wide`."""

    def __init__(self, gallery: npt.NDArray[np.float32], wide: int) -> None:
        self.name = f"binary-then-i8-{wide}"
        self.mean = gallery.mean(0)
        self.bits = np.packbits(gallery - self.mean > 0, axis=1)
        self.i8 = to_i8(gallery)
        self.wide = wide

    def memory_mb(self) -> float:
        return round((self.bits.nbytes + self.i8.nbytes) / 1e6, 1)

    def candidates(self, query: npt.NDArray[np.float32], pool: int) -> npt.NDArray:
        qbits = np.packbits(query - self.mean > 0)
        wide = np.asarray(search(self.bits, qbits, self.wide, MetricKind.Hamming, exact=True, threads=2,
                                 dtype="b1").keys, dtype=np.int64)
        scores = self.i8[wide].astype(np.float32) @ query
        return wide[np.argsort(-scores)[:pool]]


class Lists(Method):
    """The server's index (server/ann.py): int8 codes in inverted lists around spherical k-means centroids,
    built as a rebuild from SQLite builds it; `probes` lists scanned per query."""

    def __init__(self, gallery: npt.NDArray[np.float32]) -> None:
        from clipalbum.server.ann import AnnIndex

        started = time.perf_counter()
        self.index = AnnIndex.build(gallery.shape[1], ((np.arange(s, min(s + 100_000, len(gallery)), dtype=np.uint64),
                                                         gallery[s:s + 100_000])
                                                        for s in range(0, len(gallery), 100_000)))
        self.build_s = round(time.perf_counter() - started, 1)
        self.lists = len(self.index._centroids)
        self.set_probes(None)

    def set_probes(self, probes: int | None) -> None:
        from clipalbum.server.ann import PROBES

        self.index.probes = probes
        self.name = f"ivf-{self.lists}-probe{probes or PROBES}"

    def memory_mb(self) -> float:
        ann = self.index
        held = (ann._codes, ann._scales, ann._keys, ann._alive, ann._list, ann._centroids, *ann._members)
        return round(sum(a.nbytes for a in held) / 1e6, 1)

    def candidates(self, query: npt.NDArray[np.float32], pool: int) -> npt.NDArray:
        return np.asarray(self.index.search(query, pool)[0], dtype=np.int64)


def measure(method: Method, gallery: npt.NDArray[np.float32], queries: npt.NDArray[np.float32],
            truth: npt.NDArray, pool: int) -> dict[str, object]:
    recall, took = [], []
    for q, t in zip(queries, truth):
        started = time.perf_counter()
        found = rerank(gallery, q, method.candidates(q, pool), K)
        took.append((time.perf_counter() - started) * 1000)
        recall.append(overlap(found, t, K))
    return {"recall_at_20": round(float(np.mean(recall)), 4), "min_recall": round(float(np.min(recall)), 2),
            "ms_p50": round(float(np.percentile(took, 50)), 2), "ms_p99": round(float(np.percentile(took, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--pool", type=int, default=60, help="candidates each method hands to the re-rank")
    parser.add_argument("--methods", default="flat-i8,flat-f16,binary,hnsw-f16,hnsw-i8,shift,ivf",
                        help="which families to run")
    parser.add_argument("--model")
    parser.add_argument("--noise", type=float, default=0.5,
                        help="the generator's noise, in neighbourhood spreads (bench/real_geometry.py extend); "
                        "larger spreads the generated photos further from the real ones")
    args = parser.parse_args()
    data = real_vectors(resolve_model(args.model))
    rng = np.random.default_rng(2)
    texts = data["texts"][rng.choice(len(data["texts"]), args.queries, replace=False)]
    wanted = set(args.methods.split(","))
    report: dict[str, object] = {"bench": "ann_recall", "k": K, "pool": args.pool, "cores": os.cpu_count(),
                                 "noise": args.noise,
                                 "queries": args.queries, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        gallery = extended(data["images"], size, seed=0, noise=args.noise)
        images = gallery[rng.choice(size, args.queries, replace=False)]
        sets = {"text": (texts, exact_top(gallery, texts, K)), "image": (images, exact_top(gallery, images, K))}
        started = time.perf_counter()
        exact_top(gallery, texts[:64], K)  # one block of 64 queries, as numpy's matrix product takes them
        entry: dict[str, object] = {
            "exact_numpy_f32_ms_per_query_in_blocks_of_64": round((time.perf_counter() - started) * 1000 / 64, 2)}
        methods: list[Method] = []
        if "flat-i8" in wanted:
            methods.append(Flat(gallery, "i8"))
        if "flat-f16" in wanted:
            methods.append(Flat(gallery, "f16"))
        if "binary" in wanted:
            methods += [Binary(gallery, w) for w in (1000, 3000)]
        for dtype in ("f16", "i8"):
            if f"hnsw-{dtype}" in wanted:
                graph = Graph(gallery, dtype, 16, 128)
                entry[f"hnsw-{dtype}-m16 build_s"] = graph.build_s
                for ef in (64, 128, 256, 512, 1024):
                    graph.index.expansion_search = ef
                    graph.name = f"hnsw-{dtype}-m16-ef{ef}"
                    entry[graph.name] = {"memory_mb": graph.memory_mb(),
                                         **{kind: measure(graph, gallery, q, t, args.pool)
                                            for kind, (q, t) in sets.items()}}
                    if "shift" in wanted:
                        graph.shift = gallery.mean(0) - data["texts"].mean(0)
                        entry[graph.name + "-shift"] = {"text": measure(graph, gallery, texts, sets["text"][1],
                                                                        args.pool)}
                        graph.shift = None
                del graph
        if "ivf" in wanted:
            ivf = Lists(gallery)
            entry[f"ivf-{ivf.lists} build_s"] = ivf.build_s
            for probes in (16, 24, 32, 48, 64):
                ivf.set_probes(probes)
                entry[ivf.name] = {"memory_mb": ivf.memory_mb(),
                                   **{kind: measure(ivf, gallery, q, t, args.pool) for kind, (q, t) in sets.items()}}
                print(f"{size} {ivf.name}: {entry[ivf.name]}", file=sys.stderr, flush=True)
            del ivf
        for method in methods:
            entry[method.name] = {"memory_mb": method.memory_mb(),
                                  **{kind: measure(method, gallery, q, t, args.pool) for kind, (q, t) in sets.items()}}
            print(f"{size} {method.name}: {entry[method.name]}", file=sys.stderr, flush=True)
        entry["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)
        report["sizes"][str(size)] = entry  # type: ignore[index]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
