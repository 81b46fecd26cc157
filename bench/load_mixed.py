"""Many concurrent clients on a real `clipalbum serve` over loopback while a rescan runs; prints JSON.

The album is flickr8k-dev's photos, read in place (never copied or written; else scikit-image's sample
photos), indexed with `clipalbum index` before the server starts. `--clients` clients (asyncio + httpx,
each waiting for its answer before asking again) then send, for `--seconds`, a mix of text searches (flickr8k
captions drawn from a pool of `--distinct-queries`, so some repeat as they do when people type, go back or
reload), "more like this", thumbnails (some revalidated with If-None-Match), status polls and search-by-photo
uploads. `--rescan-at` seconds in, `--new-photos` new photos appear in a second album folder and the load
asks for a rescan (POST /api/index/refresh), so the server embeds them while it answers.

Per kind: requests, errors (anything but 2xx/304, by status code or transport error), p50/p99 latency and
requests per second; the server's peak resident memory (VmHWM); the machine's load average.

    .venv/bin/python bench/load_mixed.py [--clients 50] [--seconds 60] [--model BUNDLE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


from serving import (REPO, free_port, load_average, percentile, proc_cpu_seconds, proc_memory_mb,
                     queries, resolve_model, scan_album)

FLICKR_IMAGES = REPO.parent / "shared" / "data" / "flickr8k-dev" / "images"
# How often each kind is asked for: a web page is mostly searches (as people type) and the grid's thumbnails.
MIX = {"search": 40, "thumbnail": 30, "similar": 12, "status": 10, "upload": 8}
THUMB_SIZES = (128, 256, 384)


def album_photos() -> tuple[Path, list[Path], str]:
    """The album to serve (read in place) and its photos; flickr8k-dev when present, else sample photos."""
    if FLICKR_IMAGES.is_dir():
        return FLICKR_IMAGES, sorted(FLICKR_IMAGES.glob("*.jpg")), "flickr8k-dev (read in place)"
    folder = scan_album(REPO / ".cache" / "bench-load-album", photos=96, side=640)
    return folder, sorted(folder.glob("*.jpg")), "scikit-image sample photos (96 variants)"


def make_new_photos(sources: list[Path], out: Path, count: int) -> list[Path]:
    """`count` photos with bytes the index has not seen (mirrored re-encodes of album photos), for the rescan."""
    from PIL import Image, ImageOps

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as img:
            target = out / f"new_{i:04d}.jpg"
            ImageOps.mirror(img.convert("RGB")).save(target, "JPEG", quality=88)
            made.append(target)
    return made


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipalbum.server.cli", *args]


def run_index(album: Path, data: Path, bundle: Path) -> dict:
    done = subprocess.run(cli("index", str(album), "--data-dir", str(data), "--model", str(bundle), "-q",
                              "--json"), cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"clipalbum index failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def start_serve(albums: list[Path], data: Path, bundle: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    args = ["serve", "--data-dir", str(data), "--model", str(bundle), "--port", str(port),
            "--rescan-minutes", "0"]
    for album in albums:
        args += ["--album", str(album)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cli(*args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5)
            if status.status_code == 200 and not status.json()["progress"]["running"]:
                return proc  # up, and its start-up scan (nothing new) is over
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not come up in 300 s")


class Load:
    """The clients' shared state: what they ask, what they got back, and when."""

    def __init__(self, texts: list[str], uploads: list[bytes], seed: int) -> None:
        self.texts, self.uploads = texts, uploads
        self.rng = random.Random(seed)
        self.ids: list[int] = []  # photo ids seen in results, for similar and thumbnails
        self.etags: dict[str, str] = {}  # thumbnail URL -> ETag, as a browser cache keeps them
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.status_codes: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.rescan: dict[str, object] = {}

    def pick(self) -> str:
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        return "search" if kind in ("similar", "thumbnail") and not self.ids else kind

    async def one(self, client, kind: str) -> None:
        import httpx

        started = time.perf_counter()
        try:
            if kind == "search":
                r = await client.get("/api/search", params={"q": self.rng.choice(self.texts), "k": 24})
                if r.status_code == 200:
                    self.ids = ([hit["id"] for hit in r.json()["results"]] + self.ids)[:500]
            elif kind == "similar":
                r = await client.get(f"/api/images/{self.rng.choice(self.ids)}/similar", params={"k": 24})
            elif kind == "thumbnail":
                url = f"/api/images/{self.rng.choice(self.ids)}/thumbnail?size={self.rng.choice(THUMB_SIZES)}"
                known = self.etags.get(url)
                r = await client.get(url, headers={"If-None-Match": known} if known else {})
                if r.status_code == 200 and "etag" in r.headers:
                    self.etags[url] = r.headers["etag"]
            elif kind == "status":
                r = await client.get("/api/status")
                if r.status_code == 200:
                    self.note_rescan(r.json()["progress"])
            else:
                payload = self.rng.choice(self.uploads)
                r = await client.post("/api/search/image", files={"file": ("query.jpg", payload, "image/jpeg")})
        except httpx.HTTPError as exc:
            self.errors[kind][f"transport:{exc.__class__.__name__}"] += 1
            return
        self.latencies[kind].append((time.perf_counter() - started) * 1000)
        self.status_codes[kind][r.status_code] += 1
        if not (200 <= r.status_code < 300 or r.status_code == 304):
            self.errors[kind][str(r.status_code)] += 1

    def note_rescan(self, progress: dict) -> None:
        if "requested_at" in self.rescan and progress.get("started_at", 0) and \
                progress["started_at"] >= self.rescan["requested_at"]:
            self.rescan["seen_running"] = self.rescan.get("seen_running", False) or progress["running"]
            if not progress["running"] and progress.get("finished_at"):
                self.rescan["finished_at"] = progress["finished_at"]


async def drive(base: str, load: Load, clients: int, seconds: float, rescan_at: float,
                trigger_rescan) -> float:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        started = time.monotonic()
        stop_at = started + seconds

        async def client_loop() -> None:
            while time.monotonic() < stop_at:
                await load.one(client, load.pick())

        async def rescan() -> None:
            await asyncio.sleep(rescan_at)
            trigger_rescan()
            load.rescan["requested_at"] = time.time()
            r = await client.post("/api/index/refresh")
            load.rescan["refresh_status"] = r.status_code

        await asyncio.gather(rescan(), *(client_loop() for _ in range(clients)))
        return time.monotonic() - started


def summarise(load: Load, elapsed: float) -> dict[str, object]:
    kinds = {}
    for kind in MIX:
        samples = load.latencies.get(kind, [])
        errors = dict(load.errors.get(kind, {}))
        kinds[kind] = {"requests": len(samples) + sum(v for k, v in errors.items() if k.startswith("transport")),
                       "errors": sum(errors.values()), "error_codes": errors,
                       "status_codes": {str(k): v for k, v in sorted(load.status_codes.get(kind, {}).items())},
                       "p50_ms": percentile(samples, 50) if samples else None,
                       "p99_ms": percentile(samples, 99) if samples else None,
                       "per_s": round(len(samples) / elapsed, 1)}
    every = [x for samples in load.latencies.values() for x in samples]
    return {"kinds": kinds, "all": {"requests": len(every), "errors": sum(k["errors"] for k in kinds.values()),
                                    "p50_ms": percentile(every, 50), "p99_ms": percentile(every, 99),
                                    "per_s": round(len(every) / elapsed, 1)}}


def measure(args: argparse.Namespace, bundle: Path, album: Path, photos: list[Path], texts: list[str],
            uploads: list[bytes], work: Path) -> dict[str, object]:
    """One load run on a fresh server process (the album indexed first; the rescan's photos not yet there)."""
    data, added_album, staging = work / "data", work / "added", work / "staging"
    shutil.rmtree(added_album, ignore_errors=True)  # an earlier run's: the rescan must find new photos
    shutil.rmtree(staging, ignore_errors=True)
    added_album.mkdir(parents=True)
    started = time.monotonic()
    first_index = run_index(album, data, bundle)
    run_index(added_album, data, bundle)  # the second album folder, empty for now
    index_seconds = round(time.monotonic() - started, 1)
    new_photos = make_new_photos(photos, staging, args.new_photos)

    def trigger_rescan() -> None:  # the photos appear at once, as a copy from a phone would finish
        for photo in new_photos:
            photo.rename(added_album / photo.name)

    import httpx

    port = free_port()
    load_before = load_average()
    proc = start_serve([album, added_album], data, bundle, port, work / "serve.log")
    try:
        cpu_before = proc_cpu_seconds(proc.pid)
        load = Load(texts, uploads, args.seed)
        elapsed = asyncio.run(drive(f"http://127.0.0.1:{port}", load, args.clients, args.seconds,
                                    args.rescan_at, trigger_rescan))
        cpu = proc_cpu_seconds(proc.pid) - cpu_before
        memory = proc_memory_mb(proc.pid)
        status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=60).json()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    rescan = load.rescan
    return {
        "seconds": round(elapsed, 1),
        "album": {"photos": first_index["scanned"], "index_seconds": index_seconds},
        "rescan": {"new_photos": args.new_photos, "requested_at_s": args.rescan_at,
                   "refresh_status": rescan.get("refresh_status"),
                   "seen_running_by_status_polls": rescan.get("seen_running", False),
                   "took_s": round(rescan["finished_at"] - rescan["requested_at"], 1)
                   if "finished_at" in rescan else None,
                   "indexed_at_end": status["indexed"], "failed_at_end": status["failed"]},
        **summarise(load, elapsed),
        "server": {"cpu_seconds": round(cpu, 1), "cpu_ms_per_request": round(cpu * 1000 / max(1, sum(
            len(v) for v in load.latencies.values())), 2), "rss_mb_at_end": memory["VmRSS"],
                   "peak_rss_mb": memory["VmHWM"]},
        "load_average_before": load_before, "load_average_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rescan-at", type=float, default=10.0, help="seconds into the load")
    parser.add_argument("--new-photos", type=int, default=200, help="photos the rescan finds and embeds")
    parser.add_argument("--distinct-queries", type=int, default=400, help="captions the searches draw from")
    parser.add_argument("--model", help="bundle directory (default: the cached default bundle)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="keep the data directory here (default: a temporary one)")
    args = parser.parse_args()

    from clipalbum.server.bundle import read_manifest

    bundle = resolve_model(args.model)
    album, photos, album_source = album_photos()
    texts, text_source = queries(args.distinct_queries)
    uploads = [p.read_bytes() for p in photos[:: max(1, len(photos) // 8)][:8]]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="clipalbum-load-"))
    report: dict[str, object] = {
        "bench": "load_mixed", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": read_manifest(bundle).model_id, "clients": args.clients, "mix_weights": MIX,
        "album": album_source, "queries": {"from": text_source, "distinct": len(set(texts))},
        "note": "the load generator runs on the same machine as the server",
    }
    try:
        report.update(measure(args, bundle, album, photos, texts, uploads, work))
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
