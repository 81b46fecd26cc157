"""Does indexing hold searches up? Search latency of the server's vector index (server/ann.py) while another
thread adds photos as a scan does, removes photos, saves the index file and rebuilds the lists; prints JSON.

In-process, on real-geometry vectors (bench/real_geometry.py): a searching thread runs caption queries
back to back, 30 candidates each as the server asks, through every phase; the report gives the searches'
p50 / p99 / worst time per phase beside the idle phase, and what each write took. Photos are added in
batches of 64 at a scan's pace (--scan-rate) and then as fast as the index takes them.

    .venv/bin/python bench/ann_under_writes.py [--size 1000000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from real_geometry import extended, real_vectors
from serving import resolve_model

BATCH = 64  # photos per scan commit (server/scanner.py BATCH_SIZE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the idle, add and remove phases")
    parser.add_argument("--scan-rate", type=float, default=40.0,
                        help="photos/s of the paced add phase (a scan here embeds 30-40 photos/s)")
    parser.add_argument("--model")
    args = parser.parse_args()
    from clipalbum.server.ann import AnnIndex

    data = real_vectors(resolve_model(args.model))
    extra = 200_000  # room for the photos the add phase brings
    gallery = extended(data["images"], args.size + extra, seed=0)
    started = time.perf_counter()
    ann = AnnIndex.build(gallery.shape[1], ((np.arange(s + 1, min(s + 100_000, args.size) + 1, dtype=np.uint64),
                                            gallery[s:min(s + 100_000, args.size)])
                                           for s in range(0, args.size, 100_000)))
    report: dict[str, object] = {"bench": "ann_under_writes", "size": args.size, "cores": os.cpu_count(),
                                 "build_s": round(time.perf_counter() - started, 1), "phases": {}}
    texts = data["texts"]
    timings: list[tuple[float, float]] = []  # (when it ended, ms)
    stop = threading.Event()

    def search() -> None:
        n = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            ann.search(texts[n % len(texts)], 30)
            t1 = time.perf_counter()
            timings.append((t1, (t1 - t0) * 1000))
            n += 1

    def phase(name: str, work) -> None:
        begin = time.perf_counter()
        detail = work()
        end = time.perf_counter()
        took = np.array([ms for when, ms in timings if begin <= when <= end])
        report["phases"][name] = {  # type: ignore[index]
            "seconds": round(end - begin, 1), "searches": int(took.size),
            "search_ms_p50": round(float(np.percentile(took, 50)), 2) if took.size else None,
            "search_ms_p99": round(float(np.percentile(took, 99)), 2) if took.size else None,
            "search_ms_max": round(float(took.max()), 1) if took.size else None, **(detail or {})}
        print(f"{name}: {report['phases'][name]}", file=sys.stderr, flush=True)  # type: ignore[index]

    next_key = args.size + 1

    def idle() -> None:
        time.sleep(args.seconds)

    def adder(pause: float):
        def add() -> dict[str, object]:
            nonlocal next_key
            took, deadline = [], time.perf_counter() + args.seconds
            while time.perf_counter() < deadline and next_key + BATCH <= args.size + extra:
                t0 = time.perf_counter()
                ann.add(np.arange(next_key, next_key + BATCH), gallery[next_key - 1:next_key - 1 + BATCH])
                took.append((time.perf_counter() - t0) * 1000)
                next_key += BATCH
                time.sleep(pause)
            return {"batches": len(took), "add_ms_p50": round(float(np.percentile(took, 50)), 2),
                    "add_ms_max": round(float(max(took)), 1)}
        return add

    def remove() -> dict[str, object]:
        doomed = np.random.default_rng(1).permutation(np.arange(1, args.size + 1))[:args.size // 20]
        took, deadline = [], time.perf_counter() + args.seconds
        for start in range(0, len(doomed), BATCH):  # a twentieth of the photos, as a pruned album loses
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            ann.remove(doomed[start:start + BATCH].tolist())
            took.append((time.perf_counter() - t0) * 1000)
        return {"batches": len(took), "remove_ms_p50": round(float(np.percentile(took, 50)), 2),
                "removed": ann.removed}

    def save() -> dict[str, object]:
        with tempfile.TemporaryDirectory() as folder:
            ann.save(Path(folder) / "vectors.ivf")
            return {"file_mb": round((Path(folder) / "vectors.ivf").stat().st_size / 1e6, 1)}

    def load() -> dict[str, object]:
        with tempfile.TemporaryDirectory() as folder:
            ann.save(Path(folder) / "vectors.ivf")
            t0 = time.perf_counter()
            loaded = AnnIndex.load(Path(folder) / "vectors.ivf", ann.ndim)
            return {"load_s": round(time.perf_counter() - t0, 2), "loaded": len(loaded or [])}

    def rebuild() -> dict[str, object]:
        ann._rebuild(retrain=True)  # what maintain() does once the album outgrew its lists
        return {"lists": len(ann._centroids)}

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        for name, work in (("idle", idle), ("adding_at_scan_pace", adder(BATCH / args.scan_rate)),
                           ("adding_flat_out", adder(0.0)), ("removing", remove), ("saving", save),
                           ("rebuilding_with_training", rebuild), ("loading_a_copy", load), ("idle_after", idle)):
            phase(name, work)
    finally:
        stop.set()
        searcher.join()
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
