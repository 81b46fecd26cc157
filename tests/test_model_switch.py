"""Switching an index to another model in the background: the old model answers until every photo has the
new one's vector, then one swap (server/modelswitch.py, Library.continue_switch); interrupted, it resumes."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipalbum.server import modelswitch
from clipalbum.server.encoders import load_encoders
from clipalbum.server.library import Library
from clipalbum.server.preprocess import load_model_input
from clipalbum.server.settings import DataPaths, data_paths
from tests.conftest import SAMPLE_PHOTOS
from tests.tinybundle import make_tiny_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two models with different ids and embedding sizes (16 and 24), as a switch to an imported CLIP has."""
    root = tmp_path_factory.mktemp("switch-bundles")
    return (make_tiny_bundle(root / "a", dim=16, model_id="tiny-a"),
            make_tiny_bundle(root / "b", dim=24, model_id="tiny-b"))


def indexed_with(model: Path, paths: DataPaths, album: Path) -> None:
    with closing(Library.open(paths, model=model, roots=[str(album)])) as library:
        assert library.index().added == len(SAMPLE_PHOTOS)


def stop_after(batches: int):
    calls = iter(range(10**6))
    return lambda: next(calls) >= batches


def test_the_old_model_answers_until_the_new_one_has_every_photo(bundles: tuple[Path, Path], tmp_path: Path,
                                                                 sample_album: Path, database: str | None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = bundles
    monkeypatch.setattr(modelswitch, "SWITCH_BATCH", 2)
    paths = data_paths(tmp_path / "data", database)
    indexed_with(a, paths, sample_album)
    n = len(SAMPLE_PHOTOS)

    with closing(Library.open(paths, model=b, switch_in_background=True)) as library:
        assert library.model_id == "tiny-a" and library.embed_dim == 16  # the old model answers
        assert library.status().switch.model_id == "tiny-b" and library.status().switch.total == n
        assert library.continue_switch(should_stop=stop_after(1)) is False  # one batch, then "killed"
        assert library.status().switch.done == 2
        status = library.status()
        assert (status.model_id, status.indexed, status.pending) == ("tiny-a", n, 0)
        assert len(library.search_text("a cat", k=n).results) == n  # every photo still found

    with closing(Library.open(paths, model=b, switch_in_background=True)) as library:
        assert library.status().switch.done == 2  # resumed, not started again
        staged = [i for (i,) in library.store._reader.execute("SELECT id FROM staged_vectors ORDER BY id")]
        changed = library.photo(staged[0]).original_path
        with Image.open(changed) as image:  # new pixels in the same file
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, format=image.format)
        assert library.index().updated == 1  # the old model embeds it again: its staged vector is stale
        assert library.continue_switch(should_stop=lambda: True) is False
        assert library.status().switch.done == 1
        assert library.continue_switch() is True
        assert library.switch is None and library.model_id == "tiny-b" and library.embed_dim == 24
        status = library.status()
        assert (status.model_id, status.indexed, status.pending, status.switch) == ("tiny-b", n, 0, None)
        hits = library.search_text("a cat", k=n).results
        assert len(hits) == n
        if database is not None:  # the graph was built by the swap's own transaction, not after it
            from clipalbum.server.pgstore import vector_index_name

            created_by = library.store._reader.execute("SELECT xmin::text FROM pg_class WHERE relname = %s",
                                                       (vector_index_name("tiny-b"),)).fetchone()
            swapped_by = library.store._reader.execute("SELECT DISTINCT xmin::text FROM photos").fetchall()
            assert library.store.vector_index_kind("tiny-b") == ("hnsw", None) and swapped_by == [created_by]

        # Every vector is the new model's own embedding of the photo as it is now.
        encoders = load_encoders(b)
        for hit in hits:
            record = library.photo(hit.id)
            model, vector = library.store.vector(hit.id)
            expected = encoders.image.encode(load_model_input(record.original_path, encoders.manifest.image)[None])[0]
            assert model == "tiny-b" and np.allclose(vector, expected, atol=1e-5)

    with closing(Library.open(paths, model=b, switch_in_background=True)) as library:
        assert library.switch is None and library.model_id == "tiny-b"  # the saved index: nothing to switch
        assert len(library.ann) == n


def test_photos_that_cannot_be_read_wait_and_an_abandoned_switch_is_cleared(bundles: tuple[Path, Path],
                                                                              tmp_path: Path, sample_album: Path,
                                                                              database: str | None) -> None:
    a, b = bundles
    paths = data_paths(tmp_path / "data", database)
    indexed_with(a, paths, sample_album)
    n = len(SAMPLE_PHOTOS)
    unplugged = sample_album.with_name("unplugged")
    with closing(Library.open(paths, model=b, switch_in_background=True)) as library:
        sample_album.rename(unplugged)  # the album's drive goes away mid-switch
        assert library.continue_switch() is False and library.switch.resting()
        assert library.status().indexed == n and library.model_id == "tiny-a"  # nothing lost, nothing failed
        unplugged.rename(sample_album)
        library.switch._retry_at = 0.0  # (the minute's wait, skipped)
        assert library.continue_switch() is True
        assert (library.model_id, library.status().indexed, library.status().failed) == ("tiny-b", n, 0)

    with closing(Library.open(paths, model=a, switch_in_background=True)) as library:
        assert library.continue_switch(should_stop=stop_after(1)) is False
        assert library.store.staging_counts("tiny-a")[0] > 0
    with closing(Library.open(paths, model=b, switch_in_background=True)) as library:  # given up: b answers
        assert library.switch is None and library.store.staging_counts("tiny-a")[0] == 0


def test_a_search_the_swap_overtakes_is_answered_by_the_new_model(bundles: tuple[Path, Path], tmp_path: Path,
                                                                  sample_album: Path) -> None:
    a, b = bundles
    paths = data_paths(tmp_path / "data")
    indexed_with(a, paths, sample_album)
    with closing(Library.open(paths, model=b, switch_in_background=True)) as library:
        assert library.switch.embed_more(lambda: False)
        old_ann, n = library.ann, len(SAMPLE_PHOTOS)
        old_search = old_ann.search

        def swap_midway(vector, count):  # the old model's candidates, then the swap, before the rows are read
            found = old_search(vector, count)
            if library.switch is not None:
                assert library.finish_switch()
            return found

        old_ann.search = swap_midway
        assert len(library.search_text("a cat", k=n).results) == n and library.model_id == "tiny-b"
        first = library.search_text("a cat", k=1).results[0].id
        old_ann.search = old_search
        assert len(library.similar(first, k=3).results) == 3


def test_switching_back_and_a_bundle_that_is_gone(bundles: tuple[Path, Path], tmp_path: Path,
                                                  sample_album: Path, database: str | None) -> None:
    a, b = bundles
    paths = data_paths(tmp_path / "data", database)
    indexed_with(a, paths, sample_album)
    with closing(Library.open(paths, model=b, switch_in_background=True)) as library:
        assert library.continue_switch() is True and library.model_id == "tiny-b"
    with closing(Library.open(paths, model=a, switch_in_background=True)) as library:
        assert library.model_id == "tiny-b" and library.switch.model_id == "tiny-a"  # and back again
        assert library.continue_switch() is True and library.model_id == "tiny-a"

    # Without the old model's bundle, the new model answers at once from what it has (nothing yet here).
    gone = tmp_path / "copy-of-b"
    make_tiny_bundle(gone, dim=24, model_id="tiny-b-copy")
    with closing(Library.open(paths, model=gone, switch_in_background=True)) as library:
        assert library.continue_switch() is True
    (gone / "manifest.json").unlink()
    with closing(Library.open(paths, model=a, switch_in_background=True)) as library:
        assert library.switch is None and library.model_id == "tiny-a"
        assert library.status().pending == len(SAMPLE_PHOTOS)  # the scan embeds them, as before


def test_cli_commands_open_without_switching(bundles: tuple[Path, Path], tmp_path: Path,
                                             sample_album: Path) -> None:
    a, b = bundles
    paths = data_paths(tmp_path / "data")
    indexed_with(a, paths, sample_album)
    with closing(Library.open(paths, model=b)) as library:
        assert library.switch is None and library.model_id == "tiny-b"


def test_a_server_started_with_another_model_switches_while_it_answers(bundles: tuple[Path, Path], tmp_path: Path,
                                                                       sample_album: Path,
                                                                       database: str | None) -> None:
    from tests.test_server_loopback import free_port, running

    a, b = bundles
    indexed_with(a, data_paths(tmp_path / "data", database), sample_album)
    n, port = len(SAMPLE_PHOTOS), free_port()
    args = ["serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--model", str(b),
            *(["--database", database] if database else [])]
    with running(args, port, tmp_path / "serve.log") as client:
        deadline = time.monotonic() + 120
        while True:
            status = client.get("/api/status").json()
            assert len(client.get("/api/search", params={"q": "a cat", "k": n}).json()["results"]) == n
            if status["model_id"] == "tiny-b" or time.monotonic() > deadline:
                break
            assert status["model_id"] == "tiny-a" and status["switch"]["model_id"] == "tiny-b"
            time.sleep(0.05)
        assert (status["model_id"], status["embed_dim"], status["switch"]) == ("tiny-b", 24, None)
        assert (status["indexed"], status["pending"]) == (n, 0)
        assert "switch" in client.get("/schema/openapi.json").json()["components"]["schemas"]["StatusResponse"][
            "properties"]
