"""The Library facade: query validation, search modes, date filters, records, concurrency, quality."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipalbum.server.errors import ClipalbumError, ImageDecodeError, InvalidQueryError, NotFoundError
from clipalbum.server.library import MAX_UPLOAD_BYTES, IndexBusyError, Library
from clipalbum.server.settings import data_paths
from tests.albumtools import jpeg_bytes, write_variants
from tests.conftest import SAMPLE_PHOTOS, eventually, skimage_data_dir


@pytest.fixture()
def dated_library(tmp_path: Path, tiny_bundle: Path):
    """Six photos taken on known days (and one without a capture time)."""
    album = tmp_path / "dated"
    album.mkdir()
    source = Image.open(skimage_data_dir() / "astronaut.png")
    days = ["2021:03:01", "2022:07:15", "2022:07:31", "2022:08:01", "2023:12:24", None]
    for i, day in enumerate(days):
        img = source.rotate(i * 15)
        (album / f"p{i}.jpg").write_bytes(jpeg_bytes(img, f"{day} 12:00:00" if day else None))
    lib = Library.open(data_paths(tmp_path / "data-dated"), model=tiny_bundle, roots=[str(album)])
    lib.index()
    yield lib
    lib.close()


class TestValidation:
    @pytest.mark.parametrize("kwargs, message", [
        ({"q": ""}, "empty"),
        ({"q": "   \n"}, "empty"),
        ({"q": "x" * 501}, "limit is 500"),
        ({"q": "cat", "k": 0}, "k must be"),
        ({"q": "cat", "k": 201}, "k must be"),
        ({"q": "cat", "offset": -1}, "offset"),
        ({"q": "cat", "date_from": "2024-13-01"}, "not a valid date"),
        ({"q": "cat", "date_to": "yesterday"}, "like 2024-07-31"),
        ({"q": "cat", "date_from": "2024-02-01", "date_to": "2024-01-01"}, "after"),
        ({"q": "cat", "sort": "name"}, "sort must be"),
    ])
    def test_bad_queries_are_refused_with_a_message(self, library: Library, kwargs: dict, message: str) -> None:
        with pytest.raises(InvalidQueryError, match=message):
            library.search_text(**kwargs)

    def test_unknown_ids_are_not_found(self, library: Library) -> None:
        for call in (library.photo, library.original_path, library.similar):
            with pytest.raises(NotFoundError, match="12345"):
                call(12345)

    @pytest.mark.parametrize("photo_id", [0, -1, 2**63, 2**64, 10**30])
    def test_ids_no_photo_can_have_are_not_found(self, library: Library, photo_id: int) -> None:
        for call in (library.photo, library.original_path, library.similar):
            with pytest.raises(NotFoundError, match="no photo with id"):
                call(photo_id)

    def test_the_last_day_a_date_can_name_is_an_inclusive_end(self, library: Library) -> None:
        assert library.search_text("cat", date_to="9999-12-31").results == []  # no photo here is dated
        assert library.search_text("cat", date_from="9999-12-31", date_to="9999-12-31").results == []

    def test_uploads_that_are_not_photos_or_too_big_are_refused(self, library: Library) -> None:
        with pytest.raises(ImageDecodeError):
            library.search_image(b"%PDF-1.4 not a photo")
        with pytest.raises(InvalidQueryError, match="empty"):
            library.search_image(b"")
        with pytest.raises(InvalidQueryError, match="limit"):
            library.search_image(b"\xff" * (MAX_UPLOAD_BYTES + 1))

    def test_album_folders_must_exist_and_not_nest(self, tmp_path: Path, tiny_bundle: Path,
                                                   sample_album: Path) -> None:
        paths = data_paths(tmp_path / "data")
        with pytest.raises(ClipalbumError, match="does not exist"):
            Library.open(paths, model=tiny_bundle, roots=[str(tmp_path / "no-such-folder")])
        lib = Library.open(paths, model=tiny_bundle, roots=[str(sample_album)])
        try:
            with pytest.raises(ClipalbumError, match="inside the album"):
                lib.add_root(sample_album / "2023")
            assert lib.add_root(sample_album) == sample_album.resolve()
            assert lib.roots == [sample_album.resolve()]
        finally:
            lib.close()


class TestSearch:
    def test_text_search_returns_every_photo_with_its_details(self, library: Library, sample_album: Path) -> None:
        response = library.search_text("a cat on a sofa", k=200)
        assert len(response.results) == len(SAMPLE_PHOTOS)
        scores = [h.score for h in response.results]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
        hit = next(h for h in response.results if h.path.endswith("chelsea.png"))
        assert (hit.path, hit.root, hit.width, hit.height) == ("2024/summer/chelsea.png",
                                                               str(sample_album.resolve()), 451, 300)
        assert library.original_path(hit.id) == sample_album.resolve() / "2024/summer/chelsea.png"
        assert response.took_ms > 0 and response.query == "a cat on a sofa"

    def test_scores_are_exact_cosines(self, library: Library) -> None:
        query = library.encoders.text.encode(["a rocket"])[0]
        for hit in library.search_text("a rocket", k=5).results:
            _, vector = library.store.vector(hit.id)
            assert hit.score == pytest.approx(float(vector @ query), abs=1e-5)

    def test_pages_follow_each_other(self, library: Library) -> None:
        everything = [h.id for h in library.search_text("space", k=8).results]
        pages = [h.id for offset in (0, 3, 6) for h in library.search_text("space", k=3, offset=offset).results]
        assert pages == everything
        assert library.search_text("space", k=5, offset=100).results == []

    def test_similar_uses_the_stored_vector_and_leaves_the_photo_out(self, library: Library) -> None:
        target = library.search_text("coffee", k=8).results[0].id
        _, vector = library.store.vector(target)
        response = library.similar(target, k=200)
        assert target not in [h.id for h in response.results]
        assert len(response.results) == len(SAMPLE_PHOTOS) - 1
        best = response.results[0]
        assert best.score == pytest.approx(float(library.store.vector(best.id)[1] @ vector), abs=1e-5)

    def test_search_by_an_uploaded_photo_finds_that_photo_first(self, library: Library,
                                                                sample_album: Path) -> None:
        data = (sample_album / "2023" / "coffee.png").read_bytes()
        best = library.search_image(data, k=3).results[0]
        assert best.path == "2023/coffee.png" and best.score == pytest.approx(1.0, abs=1e-4)

    def test_an_empty_index_answers_with_no_results(self, tmp_path: Path, tiny_bundle: Path) -> None:
        lib = Library.open(data_paths(tmp_path / "empty"), model=tiny_bundle)
        try:
            assert lib.search_text("anything").results == []
            assert lib.status().indexed == 0
        finally:
            lib.close()


class TestDates:
    def test_a_date_range_keeps_photos_taken_in_it_inclusive(self, dated_library: Library) -> None:
        hits = dated_library.search_text("a person", k=20, date_from="2022-07-15", date_to="2022-07-31").results
        assert sorted(h.path for h in hits) == ["p1.jpg", "p2.jpg"]
        assert {h.taken_at for h in hits} == {"2022-07-15T12:00:00", "2022-07-31T12:00:00"}
        only_from = dated_library.search_text("a person", k=20, date_from="2022-08-01").results
        assert sorted(h.path for h in only_from) == ["p3.jpg", "p4.jpg"]  # no undated photo

    def test_sort_by_date_orders_newest_first_with_undated_last(self, dated_library: Library) -> None:
        hits = dated_library.search_text("a person", k=20, sort="date").results
        assert [h.path for h in hits] == ["p4.jpg", "p3.jpg", "p2.jpg", "p1.jpg", "p0.jpg", "p5.jpg"]
        page = dated_library.search_text("a person", k=2, offset=2, sort="date").results
        assert [h.path for h in page] == ["p2.jpg", "p1.jpg"]

    def test_a_date_range_through_the_ann_matches_the_exact_ranking(
            self, tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        album = tmp_path / "many"
        write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 120, side=64)  # days 1..28 of 2020-01
        lib = Library.open(data_paths(tmp_path / "data-many"), model=tiny_bundle, roots=[str(album)])
        try:
            lib.index()
            exact = lib.search_text("a galaxy", k=10, date_from="2020-01-05", date_to="2020-01-20").results
            monkeypatch.setattr("clipalbum.server.library.EXACT_FILTER_MAX", 0)  # force the ANN path
            via_ann = lib.search_text("a galaxy", k=10, date_from="2020-01-05", date_to="2020-01-20").results
            assert [h.id for h in via_ann] == [h.id for h in exact]
            assert all("2020-01-05" <= h.taken_at[:10] <= "2020-01-20" for h in via_ann)
        finally:
            lib.close()


class TestStatusAndConcurrency:

    @staticmethod
    def _index_a_new_photo_elsewhere(library: Library, tiny_bundle: Path, sample_album: Path) -> None:
        """new/cup.png, indexed by another Library on the same data directory (as `clipalbum index` would)."""
        (sample_album / "new").mkdir()
        Image.open(skimage_data_dir() / "coffee.png").rotate(90).save(sample_album / "new" / "cup.png")
        other = Library.open(library.paths, model=tiny_bundle)
        try:
            assert other.index().added == 1
        finally:
            other.close()

    @staticmethod
    def _visible(lib: Library) -> set[str]:
        """What a search can find, by path."""
        return {h.path for h in lib.search_text("a photo", k=200).results}

    def test_photos_another_process_indexes_are_searchable_at_once_and_counted_alike(
            self, library: Library, tiny_bundle: Path, sample_album: Path) -> None:
        # `library` is the server's; `other` stands for a `clipalbum index` run beside it.
        self._index_a_new_photo_elsewhere(library, tiny_bundle, sample_album)
        library.follow_other_writers()  # the server's indexer thread does this about once a second
        assert "new/cup.png" in self._visible(library)
        assert library.status().indexed == len(self._visible(library)) == len(SAMPLE_PHOTOS) + 1
        assert library.index().added == 0  # nothing left to embed: the other process did it
        assert len(library.ann) == library.status().indexed

    def test_photos_another_process_removes_leave_the_results(self, library: Library, tiny_bundle: Path,
                                                              sample_album: Path) -> None:
        assert "2023/coffee.png" in self._visible(library)
        (sample_album / "2023" / "coffee.png").unlink()
        other = Library.open(library.paths, model=tiny_bundle)
        try:
            assert other.index().removed == 1
        finally:
            other.close()
        library.follow_other_writers()
        assert "2023/coffee.png" not in self._visible(library)
        assert library.status().indexed == len(self._visible(library)) == len(SAMPLE_PHOTOS) - 1
        assert len(library.ann) == len(SAMPLE_PHOTOS) - 1  # dropped from the vector index, not only filtered

    def test_a_server_opened_while_another_indexes_follows_it(self, tmp_path: Path, tiny_bundle: Path,
                                                             sample_album: Path) -> None:
        # The second `serve` on one data directory: it opens while the first holds the writer lock.
        paths = data_paths(tmp_path / "data")
        first = Library.open(paths, model=tiny_bundle, roots=[str(sample_album)])
        try:
            with first._writer():
                second = Library.open(paths, model=tiny_bundle)
            try:
                assert self._visible(second) == set()
                first.index()
                second.follow_other_writers()
                assert len(self._visible(second)) == second.status().indexed == len(SAMPLE_PHOTOS)
            finally:
                second.close()
        finally:
            first.close()

    def test_a_real_second_process_indexing_is_followed(self, library: Library, tiny_bundle: Path,
                                                       sample_album: Path) -> None:
        (sample_album / "more").mkdir()
        for name in ("horse.png", "camera.png"):
            (sample_album / "more" / name).write_bytes((skimage_data_dir() / name).read_bytes())
        before = self._visible(library)
        done = subprocess.run([sys.executable, "-m", "clipalbum.server.cli", "index", "-q", "--data-dir",
                               str(library.paths.root), "--model", str(tiny_bundle)],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        library.follow_other_writers()
        assert self._visible(library) == before | {"more/horse.png", "more/camera.png"}
        assert library.status().indexed == len(self._visible(library))

    def test_searches_and_status_leave_the_catch_up_to_the_follow_step(
            self, library: Library, tiny_bundle: Path, sample_album: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # A catch-up (a scan of every embedded id, at times an ANN rebuild) never runs inside a request.
        self._index_a_new_photo_elsewhere(library, tiny_bundle, sample_album)
        reads: list[int] = []
        generation = library.store.generation
        monkeypatch.setattr(library.store, "generation", lambda: reads.append(1) or generation())
        for _ in range(3):
            assert "new/cup.png" not in self._visible(library)
            library.status()
        assert reads == []
        library.follow_other_writers()
        assert "new/cup.png" in self._visible(library)

    def test_a_running_server_follows_another_process_within_seconds(
            self, library: Library, tiny_bundle: Path, sample_album: Path) -> None:
        from litestar.testing import TestClient

        from clipalbum.server.app import create_app

        (sample_album / "new").mkdir()
        Image.open(skimage_data_dir() / "coffee.png").rotate(90).save(sample_album / "new" / "cup.png")
        with TestClient(create_app(library, web_dir=library.paths.root / "no-web", background_index=False)) as client:
            def visible() -> set[str]:
                return {h["path"] for h in client.get("/api/search", params={"q": "a photo", "k": 200}).json()["results"]}

            assert "new/cup.png" not in visible()
            other = Library.open(library.paths, model=tiny_bundle)
            try:
                assert other.index().added == 1
            finally:
                other.close()
            assert eventually(lambda: "new/cup.png" in visible())  # the indexer thread's follow step
            assert client.get("/api/status").json()["indexed"] == len(visible()) == len(SAMPLE_PHOTOS) + 1

    def test_a_library_opened_after_another_process_indexed_sees_its_photos(
            self, library: Library, tiny_bundle: Path, sample_album: Path) -> None:
        # The CLI opens a Library, answers once and exits: it sees the state at open, with no follow step.
        (sample_album / "new").mkdir()
        Image.open(skimage_data_dir() / "coffee.png").rotate(90).save(sample_album / "new" / "cup.png")
        assert library.index().added == 1
        cli = Library.open(library.paths, model=tiny_bundle)
        try:
            assert "new/cup.png" in self._visible(cli)
            assert cli.status().indexed == len(self._visible(cli))
        finally:
            cli.close()

    def test_status_counts_and_records(self, library: Library, sample_album: Path) -> None:
        status = library.status()
        assert (status.indexed, status.pending, status.failed) == (len(SAMPLE_PHOTOS), 0, 0)
        assert status.roots == [str(sample_album.resolve())] and status.model_id == "tiny-test"
        assert status.progress.phase == "done" and not status.progress.running
        record = library.photo(1)
        assert record.status == "indexed" and record.model_id == "tiny-test" and len(record.content_hash) == 64

    def test_searches_keep_working_during_a_scan_and_a_second_scan_is_refused(
            self, tmp_path: Path, tiny_bundle: Path, sample_album: Path) -> None:
        lib = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=[str(sample_album)])
        write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), sample_album / "more", 300, side=200)
        lib.index()  # the sample photos are indexed; now add more and scan again in the background
        write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), sample_album / "later", 300, side=190)
        lib.batch_size = 4  # many small commits: a long scan for this test
        errors: list[BaseException] = []
        thread = threading.Thread(target=lambda: _capture(errors, lib.index))
        try:
            thread.start()
            deadline = time.monotonic() + 30
            while not lib.progress.running and time.monotonic() < deadline:
                time.sleep(0.005)
            seen_running = lib.progress.running
            with pytest.raises(IndexBusyError, match="already running"):
                lib.index()
            searches = 0
            while thread.is_alive():
                assert lib.search_text("a rocket", k=5).results
                searches += 1
            thread.join()
            assert not errors, errors
            assert seen_running and searches > 0
            assert lib.status().indexed == len(SAMPLE_PHOTOS) + 600
            assert lib.ann.checksum() == lib.store.vector_checksum(lib.model_id)
        finally:
            thread.join()
            lib.close()

    def test_another_process_indexing_the_same_data_is_refused(self, library: Library, tmp_path: Path,
                                                               tiny_bundle: Path) -> None:
        with library._writer():
            other = Library.open(library.paths, model=tiny_bundle)
            try:
                with pytest.raises(IndexBusyError, match="another clipalbum process"):
                    other.index()
            finally:
                other.close()

    def test_a_reopened_library_loads_the_saved_vector_index(self, library: Library, tiny_bundle: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
        library.close()

        def no_rebuild(*args, **kwargs):
            raise AssertionError("rebuilt a consistent vector index")

        monkeypatch.setattr("clipalbum.server.library.AnnIndex.build", no_rebuild)
        again = Library.open(library.paths, model=tiny_bundle)
        try:
            assert len(again.ann) == len(SAMPLE_PHOTOS)
        finally:
            again.close()

    def test_a_vector_index_saved_before_the_last_changes_is_brought_up_to_date(
            self, library: Library, sample_album: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # As if a scan was killed after its last checkpoint: the saved index is some generations behind.
        old_file = library.paths.ann_index.read_bytes()
        old_generation = library.store.get_meta("ann_generation")
        (sample_album / "2023" / "coffee.png").unlink()
        changed = sample_album / "2024" / "summer" / "chelsea.png"
        Image.open(changed).rotate(90, expand=True).save(changed)
        Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(sample_album / "new.png")
        library.index()
        library.close()
        library.paths.ann_index.write_bytes(old_file)
        library.store = type(library.store)(library.paths.database)
        library.store.set_meta({"ann_generation": old_generation})
        library.store.close()

        def no_rebuild(*args, **kwargs):
            raise AssertionError("rebuilt instead of catching up")

        monkeypatch.setattr("clipalbum.server.library.AnnIndex.build", no_rebuild)
        again = Library.open(library.paths, model=tiny_bundle)
        try:
            assert again.ann.checksum() == again.store.vector_checksum(again.model_id)
            assert again.store.get_meta("ann_generation") == str(again.store.generation())  # and saved
            for rel in ("2024/summer/chelsea.png", "new.png"):
                photo_id = next(h.id for h in again.search_text("a cat", k=20).results if h.path == rel)
                ids, scores = again.ann.search(again.store.vector(photo_id)[1], 1)
                assert ids == [photo_id] and scores[0] == pytest.approx(1.0, abs=1e-2)
        finally:
            again.close()

    def test_a_missing_vector_index_is_rebuilt_and_a_stale_one_caught_up(self, library: Library,
                                                                         tiny_bundle: Path) -> None:
        library.close()
        library.paths.ann_index.unlink()
        library.paths.legacy_ann_index.write_bytes(b"an older version's HNSW graph")
        again = Library.open(library.paths, model=tiny_bundle)
        assert again.ann.checksum() == again.store.vector_checksum(again.model_id)
        assert not library.paths.legacy_ann_index.exists()  # replaced by the rebuilt file
        again.store.delete([1])  # SQLite moved on behind the saved index's back
        again.close()
        third = Library.open(library.paths, model=tiny_bundle)
        try:
            assert len(third.ann) == len(SAMPLE_PHOTOS) - 1
            assert 1 not in [h.id for h in third.search_text("a cat", k=20).results]
        finally:
            third.close()


    def test_the_vector_index_is_compacted_when_removals_pile_up(self, library: Library, sample_album: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("clipalbum.server.ann.COMPACT_MIN_REMOVED", 0)
        for name in ("2023/coffee.png", "2024/summer/chelsea.png"):
            (sample_album / name).unlink()
        assert library.index().removed == 2
        assert library.ann.removed == 0 and library.ann._used == len(library.ann)  # no dead slot left
        assert library.ann.checksum() == library.store.vector_checksum(library.model_id)
        assert len(library.search_text("a cat", k=20).results) == len(SAMPLE_PHOTOS) - 2


def _capture(errors: list[BaseException], fn) -> None:
    try:
        fn()
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


@pytest.mark.slow
class TestQuality:
    def test_the_default_model_finds_the_described_photo(self, tmp_path: Path, sample_album: Path,
                                                         request: pytest.FixtureRequest) -> None:
        bundle = request.getfixturevalue("default_bundle")
        lib = Library.open(data_paths(tmp_path / "data"), model=bundle, roots=[str(sample_album)])
        try:
            lib.index()
            top3 = {q: [Path(h.path).name for h in lib.search_text(q, k=3).results]
                    for q in ("a cat", "a rocket on a launch pad", "a motorcycle", "a cup of coffee")}
            found = sum(name in top3[q] for q, name in (("a cat", "chelsea.png"),
                                                        ("a rocket on a launch pad", "rocket.jpg"),
                                                        ("a motorcycle", "motorcycle_left.png"),
                                                        ("a cup of coffee", "coffee.png")))
            assert found >= 3, top3
            np.testing.assert_allclose(np.linalg.norm(lib.store.vector(1)[1]), 1.0, atol=1e-4)
        finally:
            lib.close()



def test_a_scan_asked_to_stop_keeps_what_it_did_and_removes_nothing(tmp_path: Path, tiny_bundle: Path) -> None:
    album = tmp_path / "album"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album / "first", 20)
    library = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=[str(album)])
    try:
        stopped = library.index(should_stop=lambda: True)  # asked while it walks the folders
        assert stopped.stopped and library.status().indexed == 0
        assert library.index().added == 20
        next(album.rglob("*.jpg")).unlink()  # gone: but a scan stopped early has not seen every folder
        write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album / "second", 30, side=150)
        asked = iter(range(10_000))
        stopped = library.index(should_stop=lambda: next(asked) >= 6)  # one check in the walk, then per photo
        assert stopped.stopped and stopped.removed == 0, stopped
        assert 20 + 5 <= library.status().indexed < 20 + 30  # what it embedded is kept
        finished = library.index()
        assert not finished.stopped and finished.removed == 1 and library.status().indexed == 49
    finally:
        library.close()


def test_an_open_library_runs_numpy_on_one_blas_thread_until_closed(tmp_path: Path, tiny_bundle: Path) -> None:
    # In a fresh process: this one's BLAS may already be limited by another test's library.
    script = (
        "import sys\n"
        "from threadpoolctl import threadpool_info\n"
        "from clipalbum.server.library import Library\n"
        "from clipalbum.server.settings import data_paths\n"
        "def blas(): return [pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'blas']\n"
        "def show(): print(max(blas()))\n"
        "show()\n"
        "first = Library.open(data_paths(sys.argv[1] + '/a'), model=sys.argv[2])\n"
        "show()\n"
        "second = Library.open(data_paths(sys.argv[1] + '/b'), model=sys.argv[2])\n"
        "first.close(); first.close()\n"
        "show()\n"  # the second is still open, however often the first is closed
        "second.close()\n"
        "show()\n"
        "try:\n"
        "    Library.open(data_paths(sys.argv[1] + '/c'), model=sys.argv[2], roots=[sys.argv[1] + '/missing'])\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "show()\n"  # an open that failed holds nothing
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data"), str(tiny_bundle)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "1", "1", "2", "ClipalbumError", "2"]
