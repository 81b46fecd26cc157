"""A real `kill -9` of `clipalbum index` mid-way, then a restart: the index must equal a clean run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server.ann import AnnIndex
from server.library import Library
from server.settings import data_paths
from tests.albumtools import write_variants
from tests.conftest import FLICKR8K_DEV, REPO, SAMPLE_PHOTOS, skimage_data_dir
from tests.tinybundle import make_tiny_bundle

pytestmark = pytest.mark.slow


def index_command(album: Path, data: Path, bundle: Path) -> list[str]:
    # The album may link to flickr8k-dev's photos outside it: those links are followed only when asked.
    return [sys.executable, "-m", "server.cli", "index", str(album), "--data-dir", str(data),
            "--model", str(bundle), "-q", "--json", "--follow-links-outside"]


def photo_count(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute("SELECT COUNT(*) FROM photos").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:  # created but no table yet, or busy: not there yet
        return 0


def run_and_kill(command: list[str], database: Path, kill_at: int, timeout: float = 120) -> int:
    """Starts the index, SIGKILLs it once the database holds `kill_at` photos; returns the count at the kill."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLIPALBUM_DECODE_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            count = photo_count(database)
            if count >= kill_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return count
            if proc.poll() is not None:
                raise AssertionError(f"index finished before the kill: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
        raise AssertionError("index did not get far enough in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_to_end(command: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def index_contents(data: Path, bundle: Path) -> dict[str, tuple[str, np.ndarray | None]]:
    """rel_path -> (status, vector), after checking the invariants of a sound index."""
    paths = data_paths(data)
    saved = AnnIndex.load(paths.ann_index, 16)
    lib = Library.open(paths, model=bundle)
    try:
        con = lib.store._reader
        rows = con.execute("SELECT id, root_id, rel_path, status, vector FROM photos").fetchall()
        assert len({r[0] for r in rows}) == len(rows)  # ids unique
        assert len({(r[1], r[2]) for r in rows}) == len(rows)  # every photo once
        assert all((r[3] == "indexed") == (r[4] is not None) for r in rows)  # vectors present
        assert all(r[4] is None or len(r[4]) == 16 * 4 for r in rows)
        expected = lib.store.vector_checksum(lib.model_id)
        assert lib.ann.checksum() == expected  # the ANN holds exactly SQLite's photos
        assert saved is not None and saved.checksum() == expected  # and was saved that way
        return {r[2]: (r[3], None if r[4] is None else np.frombuffer(r[4], dtype=np.float32)) for r in rows}
    finally:
        lib.close()


def assert_same_index(resumed: dict, clean: dict) -> None:
    assert resumed.keys() == clean.keys()
    for rel, (status, vector) in clean.items():
        assert resumed[rel][0] == status, rel
        if vector is not None:
            np.testing.assert_allclose(resumed[rel][1], vector, atol=1e-5, err_msg=rel)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random real bundle with a 224 px input: decoding costs what it does with a real model, so a
    scan takes long enough to be killed mid-way."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny224", size=224)


@pytest.fixture()
def album(tmp_path: Path) -> Path:
    """300 photos: flickr8k-dev's, read in place through symlinks when present, else distinct ones made in tmp."""
    folder = tmp_path / "album"
    if (FLICKR8K_DEV / "images").is_dir():
        for i, photo in enumerate(sorted((FLICKR8K_DEV / "images").glob("*.jpg"))[:300]):
            (folder / f"{i // 100}").mkdir(parents=True, exist_ok=True)
            (folder / f"{i // 100}" / photo.name).symlink_to(photo)
    else:
        write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), folder, 300, side=256)
    return folder


def test_kill_9_twice_mid_index_then_resume_equals_a_clean_run(tmp_path: Path, bundle: Path,
                                                               album: Path) -> None:
    total = sum(1 for p in album.rglob("*.jpg"))
    assert total == 300
    clean = tmp_path / "clean"
    run_to_end(index_command(album, clean, bundle))

    crashed = tmp_path / "crashed"
    command = index_command(album, crashed, bundle)
    first = run_and_kill(command, data_paths(crashed).database, kill_at=total // 5)
    second = run_and_kill(command, data_paths(crashed).database, kill_at=total * 3 // 5)
    assert 0 < first < second < total  # both kills landed mid-way, and the second run resumed
    summary = json.loads(run_to_end(command))
    assert summary["unchanged"] >= second and summary["embedded"] <= total - second  # resumed, not redone
    assert_same_index(index_contents(crashed, bundle), index_contents(clean, bundle))


def test_kill_9_while_moving_deleting_and_adding_then_resume(tmp_path: Path, bundle: Path) -> None:
    album = tmp_path / "album"
    made = write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 240, side=200)
    data = tmp_path / "data"
    command = index_command(album, data, bundle)
    run_to_end(command)
    ids_before = _ids_by_path(data)

    # Reorganise: rename two folders, delete some photos, add new ones.
    (album / "00").rename(album / "renamed-00")
    (album / "new").mkdir()
    (album / "01").rename(album / "new" / "01")
    for path in made[200:220]:
        path.unlink()
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album / "added", 150, side=180)

    killed_at = run_and_kill(command, data_paths(data).database, kill_at=240 + 40)  # gone rows leave last
    assert killed_at < 240 + 150
    run_to_end(command)

    clean = tmp_path / "clean"
    run_to_end(index_command(album, clean, bundle))
    assert_same_index(index_contents(data, bundle), index_contents(clean, bundle))
    ids_after = _ids_by_path(data)
    for old in ("00/photo_0000.jpg", "01/photo_0060.jpg"):
        assert old not in ids_after
    assert ids_after["renamed-00/photo_0000.jpg"] == ids_before["00/photo_0000.jpg"]  # moves kept their ids
    assert ids_after["new/01/photo_0060.jpg"] == ids_before["01/photo_0060.jpg"]
    shutil.rmtree(clean)


def _ids_by_path(data: Path) -> dict[str, int]:
    con = sqlite3.connect(data_paths(data).database)
    try:
        return dict(con.execute("SELECT rel_path, id FROM photos"))
    finally:
        con.close()
