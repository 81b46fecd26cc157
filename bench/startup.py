"""Start-up time of the server over a large index: seconds from starting the process to /health, and to the
first answered text search; prints JSON.

Builds (once, under --data-dir) a synthetic index of --photos photos through the Store, then starts the server
--repeat times (the first start after building finds the files in the page cache, as every later one does).

    python bench/startup.py [--model BUNDLE] [--photos 100000] [--data-dir /tmp/clipalbum-startup-100k]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving import REPO, free_port, load_average, resolve_model, stop_server, synthetic_index


def one_start(paths_root: Path, bundle: Path) -> dict:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "serving.py"), "serve", "--data-dir",
                             str(paths_root), "--model", str(bundle), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    health = search = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while search is None and time.monotonic() - started < 300:
                if proc.poll() is not None:
                    raise SystemExit(f"the server exited with {proc.returncode}")
                try:
                    if health is None and client.get("/health").status_code == 200:
                        health = time.monotonic() - started
                    if health is not None and client.get("/api/search", params={"q": "a dog on a beach"}).status_code == 200:
                        search = time.monotonic() - started
                except httpx.TransportError:
                    time.sleep(0.02)
    finally:
        stop_server(proc)
    return {"health_s": round(health or -1, 2), "first_search_s": round(search or -1, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bundle = resolve_model(args.model)
    root = Path(args.data_dir or f"/tmp/clipalbum-startup-{args.photos // 1000}k")
    built = time.monotonic()
    paths = synthetic_index(root, bundle, args.photos)
    report = {"photos": args.photos, "cpus": os.cpu_count(), "machine": platform.machine(),
              "load_average_at_start": load_average(), "index_ready_s": round(time.monotonic() - built, 1),
              "starts": [one_start(paths.root, bundle) for _ in range(args.repeat)]}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
