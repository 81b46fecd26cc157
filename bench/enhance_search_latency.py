"""Text-search latency while the server enhances a photo, against no enhancement and against an enhance worker
at normal priority (the baseline), in one process; prints JSON.

The server runs enhancement jobs on one thread at nice 10 (server/enhance/jobs.py), so that search requests
keep the CPU first. This measures what that buys: the same searches, one after another, (1) alone, (2) while
a 12 MP photo is enhanced at nice 10, (3) while it is enhanced at nice 0.

    python bench/enhance_search_latency.py [--model BUNDLE] [--queries 60] [--megapixels 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


from enhance_speed import write_test_photo
from serving import queries, resolve_model

from clipalbum.server.demo import skimage_data_dir
from clipalbum.server.enhance import jobs as jobs_module
from clipalbum.server.enhance.api import enhance_jobs
from clipalbum.server.enhance.jobs import EnhanceJobs, JobRequest
from clipalbum.server.library import Library
from clipalbum.server.settings import data_paths


def latencies(library: Library, texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        start = time.perf_counter()
        library.search_text(text, k=20)
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), 1), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
            "max_ms": round(ordered[-1], 1), "queries": len(ordered)}


def while_enhancing(library: Library, jobs: EnhanceJobs, photo: Path, texts: list[str]) -> dict:
    job = jobs.submit_photo(photo, photo.name, JobRequest(), photo_id=0)
    while jobs.get(job.id).progress == 0:  # loaded, decoded and through its first tile: the steady state
        time.sleep(0.05)
    ms = latencies(library, texts)
    still_running = jobs.get(job.id).state == "running"
    jobs.cancel(job.id)
    return {**summary(ms), "enhancing_throughout": still_running}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--megapixels", type=float, default=12.0)
    args = parser.parse_args()
    texts, source = queries(args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        album = Path(tmp) / "album"
        album.mkdir()
        for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
            (album / name).write_bytes((skimage_data_dir() / name).read_bytes())
        photo = Path(tmp) / "big.jpg"
        write_test_photo(args.megapixels, photo)
        library = Library.open(data_paths(Path(tmp) / "data"), model=resolve_model(args.model), roots=[str(album)])
        library.index()
        latencies(library, texts[:10])  # warm-up
        report: dict = {"cpus": os.cpu_count(), "machine": platform.machine(), "queries_from": source,
                        "megapixels": args.megapixels, "alone": summary(latencies(library, texts))}
        for label, nice in (("enhancing_nice_10", jobs_module.ENHANCE_NICE), ("enhancing_nice_0_baseline", 0)):
            jobs_module.ENHANCE_NICE = nice  # read by the worker thread when it starts
            jobs = enhance_jobs(library)
            assert jobs is not None, "no enhancer installed"
            report[label] = while_enhancing(library, jobs, photo, texts)
            jobs.close()
        library.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
