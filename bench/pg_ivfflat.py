"""pgvector's IVFFlat index against exact search, on the PostgreSQL bench databases; prints JSON.

For each size: in one transaction that is rolled back at the end (the database is left as it was), drop the
model's shipped HNSW index if there is one, build an IVFFlat index over the same halfvec cast with `lists`
lists, then run caption queries at each `ivfflat.probes`: recall@20 after the server's exact re-rank of 30
candidates, against an exact scan of the same vectors in numpy, and the database query's time.

The databases are the ones `bench/query_latency.py --stores postgres` fills (bench_real_<size>, ids 1..size
in the generator's order); run that first.

    .venv/bin/python bench/pg_ivfflat.py [--sizes 100000,1000000] [--probes 10,20,40,80] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from real_geometry import exact_top, extended, overlap, real_vectors, rerank
from serving import postgres_database, resolve_model

K, POOL = 20, 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--lists", type=int, default=0, help="IVFFlat lists (default: sqrt(size))")
    parser.add_argument("--probes", default="10,20,40,80")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model")
    args = parser.parse_args()
    import psycopg
    from psycopg import sql

    from clipalbum.server.pgstore import vector_index_name

    data = real_vectors(resolve_model(args.model))
    rng = np.random.default_rng(2)
    texts = data["texts"][rng.choice(len(data["texts"]), args.queries, replace=False)]
    report: dict[str, object] = {"bench": "pg_ivfflat", "k": K, "pool": POOL, "cores": os.cpu_count(),
                                 "queries": args.queries, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        gallery = extended(data["images"], size, seed=0)
        truth = exact_top(gallery, texts, K)
        lists = args.lists or round(math.sqrt(size))
        with psycopg.connect(postgres_database(f"bench_real_{size}")) as con:
            count, low, high = con.execute("SELECT count(*), min(id), max(id) FROM photos").fetchone()
            if (count, low, high) != (size, 1, size):
                raise SystemExit(f"bench_real_{size} holds {count} photos (ids {low}..{high}); fill it with "
                                 f"bench/query_latency.py --sizes {size} --stores postgres first")
            model, = con.execute("SELECT model_id FROM photos LIMIT 1").fetchone()
            ndim = gallery.shape[1]
            con.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(vector_index_name(model))))
            con.execute("SET LOCAL maintenance_work_mem = '1GB'")
            started = time.perf_counter()
            con.execute(sql.SQL(
                "CREATE INDEX bench_ivfflat ON photos USING ivfflat ((vector::halfvec({d})) halfvec_cosine_ops) "
                "WITH (lists = {lists}) WHERE model_id = {model}").format(
                d=sql.Literal(ndim), lists=sql.Literal(lists), model=sql.Literal(model)))
            entry: dict[str, object] = {"lists": lists, "build_s": round(time.perf_counter() - started, 1)}
            con.execute("ANALYZE photos")
            query = sql.SQL("SELECT id FROM photos WHERE model_id = %s ORDER BY vector::halfvec({d}) <=> "
                            "%s::halfvec({d}) LIMIT {pool}").format(d=sql.Literal(ndim), pool=sql.Literal(POOL))
            plan = "\n".join(r[0] for r in con.execute(sql.SQL("EXPLAIN ") + query,
                                                       (model, str(texts[0].tolist()))).fetchall())
            entry["uses_the_index"] = "bench_ivfflat" in plan
            for probes in (int(p) for p in args.probes.split(",")):
                con.execute(f"SET LOCAL ivfflat.probes = {probes}")
                recall, took = [], []
                for q, t in zip(texts, truth):
                    t0 = time.perf_counter()
                    ids = np.array([r[0] for r in con.execute(query, (model, str(q.tolist()))).fetchall()]) - 1
                    took.append((time.perf_counter() - t0) * 1000)
                    recall.append(overlap(rerank(gallery, q, ids, K), t, K))
                entry[f"probes_{probes}"] = {"recall_at_20": round(float(np.mean(recall)), 4),
                                             "query_ms_p50": round(float(np.percentile(took, 50)), 2),
                                             "query_ms_p99": round(float(np.percentile(took, 99)), 2)}
                print(f"{size} probes {probes}: {entry[f'probes_{probes}']}", file=sys.stderr, flush=True)
            con.rollback()  # the shipped index back, the bench's gone
        report["sizes"][str(size)] = entry  # type: ignore[index]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
