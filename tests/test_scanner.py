"""The album scanner: what it finds, what it re-reads, and what it does with broken files (tiny bundle)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clipalbum.server.scanner as scanner
from clipalbum.server.library import Library
from clipalbum.server.pathnames import from_db
from clipalbum.server.preprocess import MAX_PIXELS
from clipalbum.server.scanner import walk_album
from clipalbum.server.settings import data_paths
from tests.albumtools import jpeg_bytes, snapshot
from tests.conftest import SAMPLE_PHOTOS, skimage_data_dir
from tests.tinybundle import make_tiny_bundle


@pytest.fixture()
def library(tmp_path: Path, tiny_bundle: Path, sample_album: Path, database: str | None):
    """The scanner's rules hold on both stores: SQLite and PostgreSQL."""
    lib = Library.open(data_paths(tmp_path / "data", database), model=tiny_bundle, roots=[str(sample_album)])
    yield lib
    lib.close()


def ids_by_path(lib: Library) -> dict[str, int]:
    rows = lib.store._reader.execute("SELECT rel_path, id FROM photos").fetchall()
    return {from_db(rel if isinstance(rel, str) else bytes(rel)): i for rel, i in rows}  # Postgres: BYTEA


def assert_ann_matches_sqlite(lib: Library) -> None:
    assert lib.ann.checksum() == lib.store.vector_checksum(lib.model_id)


class TestWalk:
    def test_finds_photos_recursively_and_skips_hidden_other_and_looping(self, tmp_path: Path) -> None:
        album = tmp_path / "album"
        (album / "a" / "b").mkdir(parents=True)
        (album / ".hidden").mkdir()
        for rel in ["x.JPG", "a/y.png", "a/b/z.webp", ".hidden/h.jpg", "a/.dot.jpg", "notes.txt", "a/c.tiff"]:
            (album / rel).write_bytes(b"x")
        (album / "a" / "b" / "loop").symlink_to(album, target_is_directory=True)  # a symlink loop
        (album / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
        found = sorted(f.rel_path for f in walk_album(album))
        assert found == ["a/b/z.webp", "a/c.tiff", "a/y.png", "x.JPG"]

    def test_follows_a_linked_folder_outside_only_when_allowed_and_leaves_out_skipped_folders(
            self, tmp_path: Path) -> None:
        album, elsewhere = tmp_path / "album", tmp_path / "elsewhere"
        (album / "data").mkdir(parents=True)
        elsewhere.mkdir()
        (elsewhere / "e.jpg").write_bytes(b"x")
        (album / "data" / "thumb.jpg").write_bytes(b"x")
        (album / "link").symlink_to(elsewhere, target_is_directory=True)
        (album / "to-data").symlink_to(album / "data", target_is_directory=True)
        skip = frozenset({os.path.realpath(album / "data")})
        assert [f.rel_path for f in walk_album(album, skip)] == []
        assert [f.rel_path for f in walk_album(album, skip, follow_outside=True)] == ["link/e.jpg"]


class TestIncremental:
    def test_first_scan_embeds_every_photo_and_a_second_opens_nothing(self, library: Library,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        first = library.index()
        n = len(SAMPLE_PHOTOS)
        assert (first.scanned, first.added, first.embedded, first.failed) == (n, n, n, 0)
        assert library.status().indexed == n
        assert_ann_matches_sqlite(library)

        def no_reading(*args, **kwargs):
            raise AssertionError("an unchanged photo was opened")

        monkeypatch.setattr(scanner, "prepare", no_reading)
        second = library.index()
        assert (second.unchanged, second.embedded, second.added, second.removed) == (n, 0, 0, 0)

    def test_a_moved_or_renamed_photo_keeps_its_id_and_vector(self, library: Library, sample_album: Path) -> None:
        library.index()
        before = ids_by_path(library)
        old_id = before["2023/coffee.png"]
        _, old_vector = library.store.vector(old_id)
        (sample_album / "moved" / "deeper").mkdir(parents=True)
        (sample_album / "2023" / "coffee.png").rename(sample_album / "moved" / "deeper" / "renamed.png")
        summary = library.index()
        assert (summary.moved, summary.embedded, summary.removed, summary.added) == (1, 0, 0, 0)
        after = ids_by_path(library)
        assert after["moved/deeper/renamed.png"] == old_id and "2023/coffee.png" not in after
        np.testing.assert_array_equal(library.store.vector(old_id)[1], old_vector)
        assert_ann_matches_sqlite(library)

    def test_a_copy_reuses_the_vector_and_a_deleted_photo_leaves_the_index(self, library: Library,
                                                                          sample_album: Path) -> None:
        library.index()
        shutil.copy2(sample_album / "2023" / "coffee.png", sample_album / "coffee-copy.png")
        (sample_album / "2024" / "summer" / "chelsea.png").unlink()
        summary = library.index()
        assert (summary.added, summary.embedded, summary.removed) == (1, 0, 1)
        paths = ids_by_path(library)
        assert "2024/summer/chelsea.png" not in paths
        np.testing.assert_array_equal(library.store.vector(paths["coffee-copy.png"])[1],
                                      library.store.vector(paths["2023/coffee.png"])[1])
        hits = library.search_text("a cat", k=50).results
        assert {h.path for h in hits} == set(paths) and len(hits) == len(SAMPLE_PHOTOS)
        assert_ann_matches_sqlite(library)

    def test_a_changed_photo_is_re_embedded_under_the_same_id(self, library: Library, sample_album: Path) -> None:
        library.index()
        target = sample_album / "2023" / "coffee.png"
        photo_id = ids_by_path(library)["2023/coffee.png"]
        _, old_vector = library.store.vector(photo_id)
        Image.open(target).rotate(90, expand=True).save(target)
        summary = library.index()
        assert (summary.updated, summary.embedded, summary.added) == (1, 1, 0)
        record = library.photo(photo_id)
        assert (record.width, record.height) == (400, 600)
        assert not np.allclose(library.store.vector(photo_id)[1], old_vector)
        assert_ann_matches_sqlite(library)

    def test_only_touching_a_file_does_not_re_embed_it(self, library: Library, sample_album: Path) -> None:
        library.index()
        target = sample_album / "2023" / "coffee.png"
        os.utime(target, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        summary = library.index()
        assert (summary.embedded, summary.updated, summary.unchanged) == (0, 0, len(SAMPLE_PHOTOS))
        assert library.photo(ids_by_path(library)["2023/coffee.png"]).mtime_ns == 1_600_000_000_000_000_000

    def test_a_new_model_re_embeds_everything_even_with_another_dimension(
            self, tmp_path: Path, tiny_bundle: Path, sample_album: Path, database: str | None) -> None:
        paths = data_paths(tmp_path / "data", database)
        with_closing(Library.open(paths, model=tiny_bundle, roots=[str(sample_album)]), lambda lib: lib.index())
        other = make_tiny_bundle(tmp_path / "other", dim=8, model_id="tiny-other")
        lib = Library.open(paths, model=other)
        try:
            status = lib.status()
            assert (status.indexed, status.pending, status.embed_dim) == (0, len(SAMPLE_PHOTOS), 8)
            summary = lib.index()
            assert (summary.updated, summary.embedded) == (len(SAMPLE_PHOTOS), len(SAMPLE_PHOTOS))
            assert lib.store.vector(1)[1].shape == (8,)
            assert len(lib.search_text("a rocket", k=20).results) == len(SAMPLE_PHOTOS)
            assert lib.index(reembed=True).embedded == len(SAMPLE_PHOTOS)  # --reembed forces it
            assert_ann_matches_sqlite(lib)
        finally:
            lib.close()

    def test_the_album_folder_is_never_written(self, library: Library, sample_album: Path) -> None:
        (sample_album / "bad.jpg").write_bytes(b"not a photo")
        before = snapshot(sample_album)
        library.index()
        (sample_album / "2023" / "coffee.png").rename(sample_album / "c.png")
        before_second = snapshot(sample_album)
        library.index()
        library.search_text("coffee")
        assert snapshot(sample_album) == before_second and len(before) == len(before_second)


def with_closing(lib: Library, fn):
    try:
        return fn(lib)
    finally:
        lib.close()


class TestBrokenFiles:
    def test_broken_files_are_recorded_shown_and_retried_when_they_change(
            self, library: Library, sample_album: Path, caplog: pytest.LogCaptureFixture) -> None:
        rocket = (skimage_data_dir() / "rocket.jpg").read_bytes()
        (sample_album / "zero.jpg").write_bytes(b"")
        (sample_album / "text.png").write_bytes(b"this is not an image at all")
        (sample_album / "truncated.jpg").write_bytes(rocket[: len(rocket) // 3])
        summary = library.index()
        assert summary.failed == 3 and summary.added == len(SAMPLE_PHOTOS)
        status = library.status()
        assert status.failed == 3 and status.indexed == len(SAMPLE_PHOTOS)
        errors = {Path(f.path).name: f.error for f in status.errors}
        assert errors.keys() == {"zero.jpg", "text.png", "truncated.jpg"}
        assert "0 bytes" in errors["zero.jpg"] and "not a supported image" in errors["text.png"]
        assert "BytesIO" not in errors["text.png"]
        assert sum("skipping" in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 3

        rerun = library.index()  # still broken: still failed (as status says), but not read again
        assert (rerun.failed, rerun.unchanged, rerun.embedded) == (3, len(SAMPLE_PHOTOS), 0)
        assert library.status().failed == 3
        Image.open(sample_album / "2023" / "coffee.png").rotate(180).save(sample_album / "text.png")  # fixed
        summary = library.index()
        assert (summary.updated, summary.embedded) == (1, 1)
        assert library.status().failed == 2
        assert_ann_matches_sqlite(library)

    def test_an_unreadable_file_is_recorded(self, library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open = open

        def refusing_open(path, *args, **kwargs):
            if str(path).endswith("coffee.png"):
                raise PermissionError(13, "Permission denied")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(scanner, "open", refusing_open, raising=False)
        assert library.index().failed == 1
        assert library.status().errors[0].error == "cannot read the file: Permission denied"

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
    def test_a_file_without_read_permission_is_recorded(self, library: Library, sample_album: Path) -> None:
        target = sample_album / "2023" / "coffee.png"
        target.chmod(0)
        try:
            assert library.index().failed == 1
        finally:
            target.chmod(0o644)

    def test_a_decompression_bomb_is_refused(self, library: Library, sample_album: Path) -> None:
        side = int((MAX_PIXELS * 1.2) ** 0.5)
        Image.new("1", (side, side)).save(sample_album / "bomb.png")  # small file, 120 MP when decoded
        assert library.index().failed == 1
        assert f"{side}x{side} is 120 MP, over the 100 MP limit" in library.status().errors[0].error


class TestPhotoMetadata:
    def test_exif_orientation_and_capture_time_are_kept(self, tmp_path: Path, tiny_bundle: Path) -> None:
        album = tmp_path / "album"
        album.mkdir()
        img = Image.open(skimage_data_dir() / "rocket.jpg")  # 640x427
        (album / "sideways.jpg").write_bytes(jpeg_bytes(img, "2021:06:05 14:30:00", orientation=6))
        lib = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=[str(album)])
        try:
            lib.index()
            record = lib.photo(1)
            assert (record.width, record.height, record.taken_at) == (427, 640, "2021-06-05T14:30:00")
        finally:
            lib.close()

    def test_large_jpegs_are_decoded_small(self, tmp_path: Path, tiny_bundle: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        album = tmp_path / "album"
        album.mkdir()
        big = Image.open(skimage_data_dir() / "rocket.jpg").resize((4000, 3000))
        (album / "camera.jpg").write_bytes(jpeg_bytes(big))
        seen_sizes = []
        real_to_model_input = scanner.to_model_input

        def spy(img, spec):
            seen_sizes.append(img.size)
            return real_to_model_input(img, spec)

        monkeypatch.setattr(scanner, "to_model_input", spy)
        lib = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=[str(album)])
        try:
            lib.index()
            assert (lib.photo(1).width, lib.photo(1).height) == (4000, 3000)
            assert seen_sizes and max(seen_sizes[0]) <= 4000 // 8  # DCT scaling: decoded at 1/8
        finally:
            lib.close()
