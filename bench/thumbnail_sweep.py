"""How long the thumbnail cache's start-up sweep of leftover temporary files takes; prints JSON.

Fills a temporary folder with N empty thumbnail files over the 256 shards (plus a few stale temporary
files), then times ThumbnailCache.sweep_temporary_files() (warm page cache: the files were just made).

    .venv/bin/python bench/thumbnail_sweep.py [--thumbnails 100000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from clipalbum.server.thumbnails import TEMP_PREFIX, THUMBNAIL_VERSION, ThumbnailCache

STALE = 10  # leftover temporary files planted among the thumbnails


def fill(directory: Path, count: int) -> None:
    for i in range(count):
        key = f"{i:064x}"[::-1]  # spread over the 256 shards like content hashes
        shard = directory / key[:2]
        shard.mkdir(exist_ok=True)
        (shard / f"{key}-384-t{THUMBNAIL_VERSION}.jpg").touch()


def plant_leftovers(directory: Path) -> None:
    old = time.time() - 3600
    for i in range(STALE):
        leftover = directory / f"{i:02x}" / f"{TEMP_PREFIX}{i:08d}.part"
        leftover.touch()
        os.utime(leftover, (old, old))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--thumbnails", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where to make the scratch cache (default: the system's temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        directory = Path(scratch) / "thumbnails"
        directory.mkdir()
        fill(directory, args.thumbnails)
        cache = ThumbnailCache(directory)
        cache.sweeper.join()  # the constructor's own sweep, on an empty-handed cache
        plant_leftovers(directory)
        start = time.perf_counter()
        removed = cache.sweep_temporary_files()
        seconds = time.perf_counter() - start
    print(json.dumps({"thumbnails": args.thumbnails, "shards": 256, "removed": removed,
                      "sweep_ms_warm": round(seconds * 1000, 1), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
