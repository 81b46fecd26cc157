"""A real `kill -9` of `clipalbum index` mid-way, then a restart: the index must equal a clean run's."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipalbum.server.settings import data_paths
from tests.albumtools import write_variants
from tests.conftest import FLICKR8K_DEV, SAMPLE_PHOTOS, skimage_data_dir
from tests import faulttools
from tests.faulttools import index_contents, run_and_kill, run_to_end
from tests.tinybundle import make_tiny_bundle

pytestmark = pytest.mark.slow


def index_command(album: Path, data: Path, bundle: Path) -> list[str]:
    # The album may link to flickr8k-dev's photos outside it: such links are followed only when asked.
    return [*faulttools.index_command(album, data, bundle), "--follow-links-outside"]


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
