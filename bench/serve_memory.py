"""Resident memory of a serving process with 100k photos indexed, after queries; prints JSON.

Side by side in the same run: the same server over an empty index (what the model, Python and Litestar
cost on their own), then over the synthetic 100k index, then the same after the server process has
indexed a real album in batches (what a background scan leaves behind). Each is measured at start, and
after text queries, "more like this" queries and search-by-photo uploads.
RSS and its peak come from /proc/PID/status (VmRSS, VmHWM).

    .venv/bin/python bench/serve_memory.py [--photos 100000] [--queries 200] [--model BUNDLE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


from serving import (REPO, free_port, load_average, proc_memory_mb, queries, resolve_model,
                     scan_album, start_server, stop_server, synthetic_index)

UPLOAD_PHOTOS = ("chelsea.png", "rocket.jpg", "coffee.png", "astronaut.png")


def sample_uploads() -> list[tuple[str, bytes]]:
    from clipalbum.server.demo import skimage_data_dir
    from clipalbum.server.errors import ClipalbumError

    try:
        folder = skimage_data_dir()
    except ClipalbumError:  # no scikit-image: no uploads to measure
        return []
    return [(name, (folder / name).read_bytes()) for name in UPLOAD_PHOTOS if (folder / name).is_file()]


def measure(paths, bundle: Path, texts: list[str], uploads: list[tuple[str, bytes]],
            scan: Path | None = None) -> dict[str, object]:
    import httpx

    port = free_port()
    proc = start_server(paths, bundle, port, scan=scan)
    try:
        at_start = proc_memory_mb(proc.pid)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            ids = []
            for text in texts:
                hits = client.get("/api/search", params={"q": text, "k": 50}).json()["results"]
                ids.extend(h["id"] for h in hits[:1])
            after_text = proc_memory_mb(proc.pid)
            for photo_id in ids[:50]:
                client.get(f"/api/images/{photo_id}/similar", params={"k": 50}).raise_for_status()
            for sort in ("date", "relevance"):
                client.get("/api/search", params={"q": "a dog", "k": 200, "sort": sort,
                                                  "from": "2012-01-01", "to": "2020-12-31"}).raise_for_status()
            for name, payload in uploads * 3:
                client.post("/api/search/image", files={"file": (name, payload)}).raise_for_status()
            status = client.get("/api/status").json()
        after_all = proc_memory_mb(proc.pid)
    finally:
        stop_server(proc)
    return {"indexed": status["indexed"], "at_start_mb": at_start, "after_text_queries_mb": after_text,
            "after_all_queries_mb": after_all}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200, help="text queries before measuring")
    parser.add_argument("--scan-photos", type=int, default=96,
                        help="photos the server indexes (batches of 32) before the third measurement")
    parser.add_argument("--model", help="bundle directory (default: the cached default bundle)")
    parser.add_argument("--workdir", default=str(REPO / ".cache" / "bench-serving"))
    args = parser.parse_args()

    bundle = resolve_model(args.model)
    texts, source = queries(args.queries)
    uploads = sample_uploads()
    from clipalbum.server.bundle import read_manifest

    manifest = read_manifest(bundle)
    workdir = Path(args.workdir) / manifest.model_id  # the synthetic rows carry the model id
    empty = synthetic_index(workdir / "clustered-0", bundle, 0)
    full = synthetic_index(workdir / f"clustered-{args.photos}", bundle, args.photos)
    album = scan_album(Path(args.workdir) / "scan-album", photos=args.scan_photos)
    report = {
        "bench": "serve_memory", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": manifest.model_id, "embed_dim": manifest.embed_dim, "queries_from": source,
        "uploads": len(uploads) * 3, "bar": {"rss_mb": 300, "at_photos": 100_000},
        "baseline_empty_index": measure(empty, bundle, texts, uploads),
        "indexed": measure(full, bundle, texts, uploads),
        f"indexed_after_scanning_{args.scan_photos}_photos": measure(full, bundle, texts, uploads, scan=album),
        "database_mb": round(full.database.stat().st_size / 1e6, 1), "load_average_at_end": load_average(),
        "ann_file_mb": round(full.ann_index.stat().st_size / 1e6, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
