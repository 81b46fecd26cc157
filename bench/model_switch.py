"""What a background model switch costs the database at N photos, and whether searches wait for its swap;
prints JSON.

In-process, on a temporary SQLite store: N photos with a 256-d vector of the old model, then the switch's
database work for a 512-d new model (an imported ViT-B's size): staging the new vectors 16 at a time as
server/modelswitch.py does, building the new model's vector index from them, and the one transaction that
moves them into the photos. Beside it, in the same run, the old way's database work: rewriting the photos'
vectors in place in batches of 64, as a scan re-embedding them does. A reader thread runs the search path's
row lookup (Store.vector_rows, 30 ids) back to back throughout; its p50 / p99 / worst per phase show whether
a search waits for the swap. Embedding time is the model's and is not counted here (bench/import_speed.py).

    .venv/bin/python bench/model_switch.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from serving import percentile

from clipalbum.server.ann import AnnIndex
from clipalbum.server.store import Changes, PhotoFields, Store

OLD_DIM, NEW_DIM = 256, 512


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def filled(path: Path, photos: int, rng: np.random.Generator) -> Store:
    store = Store(path)
    root = store.add_root(Path("/album"))
    for start in range(0, photos, 4096):
        n = min(4096, photos - start)
        vectors = unit(rng, n, OLD_DIM)
        store.apply(Changes(writes=[(None, PhotoFields(root, f"{start + i:07d}.jpg", size=1000, mtime_ns=1,
                                                       content_hash=f"h{start + i}", model_id="old", vector=v))
                                    for i, v in enumerate(vectors)]))
    return store


class Reader(threading.Thread):
    """Reads 30 random photos' rows (what a search does after the vector index) back to back."""

    def __init__(self, store: Store, photos: int, model: str) -> None:
        super().__init__(daemon=True)
        self.store, self.photos, self.model = store, photos, model
        self.times: list[tuple[float, float]] = []  # (ended at, ms)
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(1)
        while not self.stop.is_set():
            ids = rng.integers(1, self.photos + 1, 30).tolist()
            t0 = time.perf_counter()
            self.store.vector_rows(ids, self.model)
            t1 = time.perf_counter()
            self.times.append((t1, (t1 - t0) * 1000))
            time.sleep(0.002)  # a busy server's pace, not a spin that starves the writer of the GIL

    def between(self, start: float, end: float) -> dict[str, float]:
        ms = [m for t, m in self.times if start <= t <= end]
        return {"searches": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
                "worst_ms": round(max(ms), 3)} if ms else {"searches": 0}


def measure(photos: int, root: Path) -> dict[str, object]:
    rng = np.random.default_rng(0)
    store = filled(root / "index.sqlite3", photos, rng)
    size_before = (root / "index.sqlite3").stat().st_size + (root / "index.sqlite3-wal").stat().st_size
    reader = Reader(store, photos, "old")
    reader.start()
    report: dict[str, object] = {"photos": photos}

    t0 = time.perf_counter()
    time.sleep(1.0)
    t1 = time.perf_counter()
    report["idle"] = reader.between(t0, t1)

    staged = 0
    while jobs := store.to_restage("new", staged, 16):
        store.stage("new", jobs, list(unit(rng, len(jobs), NEW_DIM)), [None] * len(jobs))
        staged = jobs[-1].id
    t2 = time.perf_counter()
    report["stage"] = {"seconds": round(t2 - t1, 2), "photos_per_s": round(photos / (t2 - t1)),
                       "searches": reader.between(t1, t2)}
    store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    report["database_mb"] = {"before": round(size_before / 1e6, 1),
                             "staged": round((root / "index.sqlite3").stat().st_size / 1e6, 1)}

    ann = AnnIndex.build(NEW_DIM, store.iter_switch_vectors("new"))
    t3 = time.perf_counter()
    report["build_new_vector_index_s"] = round(t3 - t2, 2)
    assert len(ann) == photos
    assert store.promote_staged("new")
    t4 = time.perf_counter()
    reader.model = "new"
    report["swap_transaction"] = {"seconds": round(t4 - t3, 2), "searches": reader.between(t3, t4)}

    # The old way, side by side: the same photos' vectors rewritten in place, 64 per transaction.
    t5 = time.perf_counter()
    for start in range(1, photos + 1, 64):
        ids = list(range(start, min(start + 64, photos + 1)))
        vectors = unit(rng, len(ids), NEW_DIM)
        store.apply(Changes(writes=[(i, PhotoFields(1, f"{i - 1:07d}.jpg", size=1000, mtime_ns=1,
                                                    content_hash=f"h{i - 1}", model_id="newer", vector=v))
                                    for i, v in zip(ids, vectors)]))
    t6 = time.perf_counter()
    report["in_place_rewrite"] = {"seconds": round(t6 - t5, 2), "photos_per_s": round(photos / (t6 - t5))}
    reader.stop.set()
    reader.join()
    store.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    results = []
    for photos in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-switch-") as tmp:
            results.append(measure(photos, Path(tmp)))
    print(json.dumps({"bench": "model_switch", "cores": os.cpu_count(), "old_dim": OLD_DIM, "new_dim": NEW_DIM,
                      "runs": results}, indent=2))


if __name__ == "__main__":
    main()
