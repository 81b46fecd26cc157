"""Text-search latency and server memory while bomb-sized photos are uploaded for search-by-photo; prints JSON.

A real server on loopback over a synthetic index. Side by side in one run: a quiet phase (text queries
alone) and a pressure phase (the same queries while N clients, threads of another process, keep uploading
a ~100 kB PNG that decodes to 81 MP, for a fixed time; a client told 503 tries again 0.2 s later).
The server's resident memory is sampled from /proc/PID/status every 50 ms.

    .venv/bin/python bench/upload_pressure.py [--uploaders 16] [--seconds 20] [--queries 300] [--model BUNDLE]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np


from serving import (REPO, free_port, load_average, percentile, proc_memory_mb, queries,
                     resolve_model, start_server, stop_server, synthetic_index)

BARS = {"peak_rss_mb": 500, "text_p99_ms_under_pressure": 100}


def bomb_png(side: int) -> bytes:
    """A valid, mostly flat grey PNG of side x side pixels: tens of kB on the wire, side^2 pixels decoded."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (side, side), 200)
    ImageDraw.Draw(img).rectangle((side // 4, side // 4, side // 2, side // 2), fill=40)
    buffer = io.BytesIO()
    img.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


class RssSampler(threading.Thread):
    """Reads the server's VmRSS every `interval` seconds; keeps the peak and the samples."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append(proc_memory_mb(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        return {"peak_mb": max(self.samples), "median_mb": round(float(np.median(self.samples)), 1),
                "samples": len(self.samples)}


def summarize(samples: list[float]) -> dict[str, float]:
    return {"p50": percentile(samples, 50), "p90": percentile(samples, 90), "p99": percentile(samples, 99),
            "max": round(max(samples), 2), "count": len(samples)}


def text_queries(port: int, texts: list[str], until: threading.Event | None = None) -> dict[str, object]:
    """Runs the queries one after another (cycling until `until` is set, if given): wall-clock ms per query
    as the client sees it, and the search's own time as the server reports it (took_ms)."""
    import httpx

    wall: list[float] = []
    server: list[float] = []
    slowest: list[tuple[float, float, float]] = []  # (wall ms, seconds into the phase, server ms)
    phase_start = time.perf_counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        i = 0
        while (i < len(texts)) if until is None else not until.is_set():
            started = time.perf_counter()
            response = client.get("/api/search", params={"q": texts[i % len(texts)], "k": 20})
            wall.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            server.append(response.json()["took_ms"])
            slowest.append((round(wall[-1], 1), round(started - phase_start, 2), server[-1]))
            i += 1
    slowest.sort(reverse=True)
    return {"http_ms": summarize(wall), "server_ms": summarize(server),
            "slowest_wall_ms_at_s_server_ms": slowest[:5]}


def uploader(port: int, payload: bytes, deadline: float, statuses: Counter, latency: list[float],
             lock: threading.Lock) -> None:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        while time.time() < deadline:
            started = time.perf_counter()
            try:
                code = client.post("/api/search/image", files={"file": ("bomb.png", payload, "image/png")}).status_code
            except httpx.TransportError as exc:
                code = exc.__class__.__name__
            with lock:
                statuses[str(code)] += 1
                latency.append((time.perf_counter() - started) * 1000)
            if code == 503:
                time.sleep(0.2)  # as a client told "try again" would, a little later


def upload_clients(port: int, payload: bytes, clients: int, deadline: float,
                   results: multiprocessing.Queue) -> None:
    """`clients` upload loops on threads of this (separate) process, so the uploaders' own work does not
    delay the process that times the text queries; puts (statuses, latencies) on `results` at the end."""
    statuses: Counter = Counter()
    latency: list[float] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=uploader, args=(port, payload, deadline, statuses, latency, lock))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((dict(statuses), latency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploaders", type=int, default=16, help="concurrent upload clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the uploads go on")
    parser.add_argument("--side", type=int, default=9000, help="the uploaded PNG is side x side pixels")
    parser.add_argument("--queries", type=int, default=300, help="text queries in the quiet phase")
    parser.add_argument("--photos", type=int, default=10_000, help="synthetic photos in the index")
    parser.add_argument("--model", help="bundle directory (default: the cached default bundle)")
    parser.add_argument("--workdir", default=str(REPO / ".cache" / "bench-serving"))
    args = parser.parse_args()

    bundle = resolve_model(args.model)
    texts, source = queries(args.queries)
    payload = bomb_png(args.side)
    from clipalbum.server.bundle import read_manifest

    manifest = read_manifest(bundle)
    paths = synthetic_index(Path(args.workdir) / manifest.model_id / f"clustered-{args.photos}", bundle, args.photos)
    port = free_port()
    proc = start_server(paths, bundle, port)
    try:
        text_queries(port, texts[:30])  # warm-up
        quiet_load = load_average()
        sampler = RssSampler(proc.pid)
        sampler.start()
        quiet = text_queries(port, texts)
        quiet_rss = sampler.stop()

        pressure_load = load_average()
        sampler = RssSampler(proc.pid)
        sampler.start()
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        clients = context.Process(target=upload_clients,
                                  args=(port, payload, args.uploaders, time.time() + args.seconds, results))
        clients.start()
        uploads_done = threading.Event()
        finished: list[tuple[dict[str, int], list[float]]] = []
        waiter = threading.Thread(target=lambda: (finished.append(results.get()), uploads_done.set()))
        waiter.start()
        pressure = text_queries(port, texts, until=uploads_done)
        waiter.join()
        clients.join()
        statuses, upload_ms = finished[0]
        pressure_rss = sampler.stop()
        after = proc_memory_mb(proc.pid)
    finally:
        stop_server(proc)

    report = {
        "bench": "upload_pressure", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": manifest.model_id, "indexed": args.photos, "queries_from": source,
        "upload": {"bytes": len(payload), "pixels": args.side * args.side, "clients": args.uploaders,
                   "seconds": args.seconds},
        "quiet": {"text": quiet, "rss": quiet_rss, "load_average_before": quiet_load},
        "pressure": {"text": pressure, "rss": pressure_rss, "upload_status": statuses,
                     "upload_ms": summarize(upload_ms) if upload_ms else None,
                     "load_average_before": pressure_load},
        "server_after": after,
        "bars": BARS,
        "meets_bars": {"peak_rss_mb": pressure_rss["peak_mb"] < BARS["peak_rss_mb"],
                       "text_p99_ms_under_pressure":
                           pressure["http_ms"]["p99"] < BARS["text_p99_ms_under_pressure"]},  # type: ignore[index]
        "load_average_at_end": load_average(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
