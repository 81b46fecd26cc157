"""Helpers for the crash and fault tests: run `clipalbum` in a subprocess, SIGKILL it at a chosen point, and
check that an index is sound (the invariants every kill, full disk or vanished album must leave intact)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from clipalbum.server.ann import AnnIndex
from clipalbum.server.bundle import read_manifest
from clipalbum.server.library import Library
from clipalbum.server.preprocess import PHOTO_SUFFIXES
from clipalbum.server.settings import data_paths
from tests.albumtools import snapshot
from tests.conftest import REPO


def index_command(album: Path | None, data: Path, bundle: Path) -> list[str]:
    """`clipalbum index [ALBUM] --data-dir DATA --model BUNDLE -q --json` (no album: the ones indexed before)."""
    return [sys.executable, "-m", "clipalbum.server.cli", "index", *([str(album)] if album else []), "--data-dir", str(data),
            "--model", str(bundle), "-q", "--json"]


def _read_only(database: Path, sql: str) -> list[tuple]:
    """A query on a database another process may be writing; [] while it has no tables yet or is busy."""
    if not database.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def photo_count(database: Path) -> int:
    rows = _read_only(database, "SELECT COUNT(*) FROM photos")
    return int(rows[0][0]) if rows else 0


def generation(database: Path) -> int:
    """The store's commit counter (meta 'generation'): each scan batch adds one."""
    rows = _read_only(database, "SELECT value FROM meta WHERE key = 'generation'")
    return int(rows[0][0]) if rows else 0


def start(command: list[str], env: dict[str, str] | None = None, log_file: Path | None = None) -> subprocess.Popen:
    """Starts a clipalbum command from the repository, with one decode thread so a scan takes a while."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIPALBUM_DECODE_THREADS": "1", **(env or {})}
    out = open(log_file, "ab") if log_file else subprocess.PIPE
    try:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT if log_file
                                else subprocess.PIPE)
    finally:
        if log_file:
            out.close()


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILLs `proc` as soon as `ready()` holds; False when it exited on its own first (nothing killed)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if ready():
                if proc.poll() is not None:
                    return False
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.002)
        raise AssertionError("the kill point was not reached in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_and_kill(command: list[str], database: Path, kill_at: int, timeout: float = 120) -> int:
    """Starts the index, SIGKILLs it once the database holds `kill_at` photos; returns the count at the kill."""
    proc = start(command)
    if not kill_when(proc, lambda: photo_count(database) >= kill_at, timeout):
        raise AssertionError(f"index finished before the kill: {proc.stderr.read().decode()[-2000:]}")
    return photo_count(database)


def run_to_end(command: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def album_photos(album: Path) -> set[str]:
    """Relative paths of the photo files under `album` as a scan should find them (hidden entries skipped)."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(album):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in PHOTO_SUFFIXES:
                found.add(str((Path(dirpath) / name).relative_to(album)).replace(os.sep, "/"))
    return found


def index_contents(data: Path, bundle: Path) -> dict[str, tuple[str, np.ndarray | None]]:
    """rel_path -> (status, vector), after checking the invariants of a sound index: SQLite intact, every
    photo once, a vector of the right size for every indexed photo, and the ANN index (in memory and as
    saved) holding exactly SQLite's embedded photos with their vectors."""
    paths = data_paths(data)
    integrity = _read_only(paths.database, "PRAGMA integrity_check")
    assert integrity == [("ok",)], integrity
    dim = read_manifest(bundle).embed_dim
    saved = AnnIndex.load(paths.ann_index, dim)  # as the last run left it, before Library.open may rebuild it
    lib = Library.open(paths, model=bundle)
    try:
        con = lib.store._reader
        rows = con.execute("SELECT id, root_id, rel_path, status, vector, model_id FROM photos").fetchall()
        assert len({r[0] for r in rows}) == len(rows)  # ids unique
        assert len({(r[1], r[2]) for r in rows}) == len(rows)  # every photo once
        assert all((r[3] == "indexed") == (r[4] is not None) == (r[5] is not None) for r in rows)
        assert all(r[4] is None or len(r[4]) == dim * 4 for r in rows)
        expected = lib.store.vector_checksum(lib.model_id)
        assert lib.ann.checksum() == expected  # the ANN holds exactly SQLite's photos
        assert saved is not None and saved.checksum() == expected  # and was saved that way
        embedded = [(r[0], np.frombuffer(r[4], dtype=np.float32)) for r in rows if r[4] is not None]
        if embedded:  # under each id, that photo's vector (as int8 codes), not a stale one
            ids = np.array([i for i, _ in embedded], dtype=np.uint64)
            np.testing.assert_allclose(saved.approximate_vectors(ids), np.stack([v for _, v in embedded]),
                                       atol=5e-3)
        return {r[2]: (r[3], None if r[4] is None else np.frombuffer(r[4], dtype=np.float32)) for r in rows}
    finally:
        lib.close()


def assert_sound_index(data: Path, bundle: Path, album: Path, before: dict | None = None,
                       allow_failed: bool = False) -> dict[str, tuple[str, np.ndarray | None]]:
    """The index invariants (index_contents) plus, for a one-album index: exactly one row per photo file in
    `album` and none for a file that isn't there, no partial thumbnail, and the album's files unchanged
    since `before` (an albumtools.snapshot)."""
    contents = index_contents(data, bundle)
    photos = album_photos(album)
    assert set(contents) == photos, (sorted(set(contents) - photos)[:5], sorted(photos - set(contents))[:5])
    if not allow_failed:
        failed = [rel for rel, (status, _) in contents.items() if status != "indexed"]
        assert not failed, failed[:5]
    for thumb in data_paths(data).thumbnails.rglob("*.jpg"):
        if not thumb.name.startswith("."):  # final names only; see thumbnails.py's write-then-rename
            with Image.open(thumb) as img:
                img.load()  # raises on a truncated file
    if before is not None:
        assert snapshot(album) == before, "the album's files changed"
    return contents
