"""Thumbnails: made from real photos, oriented, sized, cached by content hash, originals untouched."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from clipalbum.server.decode_budget import DECODE_BUDGET
from clipalbum.server.errors import ImageDecodeError, InvalidQueryError, ServerBusyError
from clipalbum.server.thumbnails import (DEFAULT_SIZE, THUMBNAIL_SIZES, THUMBNAIL_VERSION, ThumbnailCache, snap_size,
                               thumbnail_etag)
from tests.conftest import skimage_data_dir


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TestSnapSize:
    def test_default_when_not_asked(self) -> None:
        assert snap_size(None) == DEFAULT_SIZE

    @pytest.mark.parametrize(("asked", "snapped"), [(1, 128), (128, 128), (129, 256), (300, 384), (1024, 1024)])
    def test_rounds_up_to_a_cached_size(self, asked: int, snapped: int) -> None:
        assert snap_size(asked) == snapped

    @pytest.mark.parametrize("asked", [0, -5, THUMBNAIL_SIZES[-1] + 1, 100_000])
    def test_refuses_sizes_out_of_range(self, asked: int) -> None:
        with pytest.raises(InvalidQueryError, match="thumbnail size"):
            snap_size(asked)


class TestThumbnailCache:
    def test_makes_a_jpeg_whose_long_side_is_the_size(self, tmp_path: Path) -> None:
        original = skimage_data_dir() / "astronaut.png"  # 512x512
        before = _sha256(original)
        cache = ThumbnailCache(tmp_path / "thumbs")
        thumb = cache.get(original, before, 256)
        with Image.open(thumb) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert max(img.size) == 256
        assert _sha256(original) == before, "the original must only be read"

    def test_keeps_the_aspect_ratio(self, tmp_path: Path) -> None:
        original = skimage_data_dir() / "chelsea.png"  # 451x300
        thumb = ThumbnailCache(tmp_path).get(original, _sha256(original), 128)
        with Image.open(thumb) as img:
            assert img.size == (128, 85)

    def test_never_enlarges_a_small_photo(self, tmp_path: Path) -> None:
        small = tmp_path / "small.png"
        Image.new("RGB", (40, 30), (200, 10, 10)).save(small)
        with Image.open(ThumbnailCache(tmp_path / "t").get(small, _sha256(small), 512)) as img:
            assert img.size == (40, 30)

    def test_applies_exif_orientation(self, tmp_path: Path) -> None:
        rotated = tmp_path / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # stored landscape, shown portrait (rotate 90 degrees clockwise)
        Image.new("RGB", (400, 200), (10, 120, 200)).save(rotated, exif=exif.tobytes())
        with Image.open(ThumbnailCache(tmp_path / "t").get(rotated, _sha256(rotated), 128)) as img:
            assert img.size == (64, 128)

    def test_second_request_is_served_from_disk(self, tmp_path: Path) -> None:
        original = skimage_data_dir() / "coffee.png"
        digest = _sha256(original)
        cache = ThumbnailCache(tmp_path)
        first = cache.get(original, digest, 128)
        stamp = first.stat().st_mtime_ns
        # A different (even unreadable) source path with the same content hash hits the cache.
        assert cache.get(tmp_path / "gone.png", digest, 128) == first
        assert first.stat().st_mtime_ns == stamp
        assert cache.get(original, digest, 256) != first  # each size has its own file

    def test_leaves_no_temporary_files(self, tmp_path: Path) -> None:
        original = skimage_data_dir() / "rocket.jpg"
        cache = ThumbnailCache(tmp_path)
        thumb = cache.get(original, _sha256(original), 384)
        assert [p.name for p in thumb.parent.iterdir()] == [thumb.name]

    def test_concurrent_requests_share_one_good_file(self, tmp_path: Path) -> None:
        original = skimage_data_dir() / "astronaut.png"
        digest = _sha256(original)
        cache = ThumbnailCache(tmp_path, max_concurrent=2)
        with ThreadPoolExecutor(8) as pool:
            paths = set(pool.map(lambda _: cache.get(original, digest, 256), range(16)))
        assert len(paths) == 1
        (thumb,) = paths
        with Image.open(thumb) as img:
            img.load()
            assert max(img.size) == 256
        assert [p.name for p in thumb.parent.iterdir()] == [thumb.name]

    def test_a_broken_original_raises_a_decode_error(self, tmp_path: Path) -> None:
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
        cache = ThumbnailCache(tmp_path / "t")
        with pytest.raises(ImageDecodeError):
            cache.get(broken, _sha256(broken), 128)
        assert not any((tmp_path / "t").rglob("*.jpg"))

    def test_odd_hashes_still_give_safe_file_names(self, tmp_path: Path) -> None:
        cache = ThumbnailCache(tmp_path)
        path = cache.path_for("../../etc/passwd", 128)
        assert path.parent.parent == tmp_path and ".." not in path.name

    def test_a_thumbnail_waits_for_decode_memory_only_as_long_as_it_is_told(self, tmp_path: Path) -> None:
        # A scan holding the whole budget must not keep a thumbnail (and the queue behind it) waiting forever.
        original = skimage_data_dir() / "astronaut.png"
        cache = ThumbnailCache(tmp_path)
        with DECODE_BUDGET.reserve(DECODE_BUDGET.capacity):
            with pytest.raises(ServerBusyError, match="try again"):
                cache.get(original, _sha256(original), 256, wait=0.05)
        assert cache.cached(_sha256(original), 256) is None
        assert cache.get(original, _sha256(original), 256, wait=5.0).is_file()  # memory free again: made


def test_etag_changes_with_content_and_size() -> None:
    assert thumbnail_etag("ab" * 32, 128) != thumbnail_etag("ab" * 32, 256)
    assert thumbnail_etag("ab" * 32, 128) != thumbnail_etag("cd" * 32, 128)
    assert thumbnail_etag("ab" * 32, 128).startswith('"')


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


class TestLeftoverTemporaryFiles:
    """A kill -9 between creating a thumbnail's temporary file and renaming it leaves the file behind."""

    def _leftovers(self, directory: Path) -> dict[str, Path]:
        shard = directory / "ab"
        shard.mkdir(parents=True)
        files = {
            "old": shard / ".thumb-k1ll3d.part",
            "old_from_an_older_version": shard / ".thumb-0ldn4me.jpg",
            "being_written": shard / ".thumb-wr1t1ng.part",
            "thumbnail": shard / f"{'ab' * 32}-128-t{THUMBNAIL_VERSION}.jpg",
            "not_ours": shard / "notes.txt",
        }
        for path in files.values():
            path.write_bytes(b"\xff\xd8 partial")
        for name in ("old", "old_from_an_older_version", "thumbnail", "not_ours"):
            _age(files[name], 3600)
        return files

    def test_a_new_cache_sweeps_old_temporary_files_and_keeps_the_rest(self, tmp_path: Path) -> None:
        files = self._leftovers(tmp_path)
        cache = ThumbnailCache(tmp_path)
        cache.sweeper.join(30)
        assert not files["old"].exists() and not files["old_from_an_older_version"].exists()
        # A temporary file this young may be another thread's (or server's) write in progress.
        assert files["being_written"].exists()
        assert files["thumbnail"].exists() and files["not_ours"].exists()

    def test_a_sweep_says_how_many_it_removed(self, tmp_path: Path) -> None:
        self._leftovers(tmp_path)
        cache = ThumbnailCache(tmp_path)
        cache.sweeper.join(30)
        assert cache.sweep_temporary_files() == 0  # the construction's sweep took both
        another = tmp_path / "cd" / ".thumb-4n0th3r.part"
        another.parent.mkdir()
        another.write_bytes(b"")
        _age(another, 3600)
        assert cache.sweep_temporary_files() == 1 and not another.exists()

    def test_a_missing_cache_folder_is_nothing_to_sweep(self, tmp_path: Path) -> None:
        cache = ThumbnailCache(tmp_path / "not-yet")
        cache.sweeper.join(30)
        assert cache.sweep_temporary_files() == 0 and not (tmp_path / "not-yet").exists()

    def test_a_write_in_progress_is_not_swept(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        original = skimage_data_dir() / "astronaut.png"
        cache = ThumbnailCache(tmp_path)
        cache.sweeper.join(30)
        real_fdopen = os.fdopen
        swept: list[int] = []

        def sweep_mid_write(fd: int, *args, **kwargs):  # type: ignore[no-untyped-def]
            swept.append(cache.sweep_temporary_files())  # the temporary file exists now
            return real_fdopen(fd, *args, **kwargs)

        monkeypatch.setattr("clipalbum.server.thumbnails.os.fdopen", sweep_mid_write)
        thumb = cache.get(original, _sha256(original), 128)
        assert swept == [0] and isinstance(thumb, Path) and thumb.is_file()


class TestUnwritableCache:
    @pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
    def test_a_full_or_read_only_disk_still_gives_the_thumbnail_in_memory(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
            code: int) -> None:
        original = skimage_data_dir() / "chelsea.png"

        def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr("clipalbum.server.thumbnails.tempfile.mkstemp", refuse)
        cache = ThumbnailCache(tmp_path)
        with caplog.at_level("WARNING", logger="clipalbum.server.thumbnails"):
            first = cache.get(original, _sha256(original), 128)
            second = cache.get(original, _sha256(original), 256)
        assert isinstance(first, bytes) and isinstance(second, bytes)
        with Image.open(io.BytesIO(first)) as img:
            assert img.format == "JPEG" and img.size == (128, 85)
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "not cached" in warnings[0].getMessage()
        assert not list(tmp_path.rglob("*.jp*g")) and not list(tmp_path.rglob(".thumb-*"))

    def test_other_write_errors_are_not_hidden(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        original = skimage_data_dir() / "chelsea.png"

        def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr("clipalbum.server.thumbnails.tempfile.mkstemp", broken)
        with pytest.raises(OSError, match="Input/output"):
            ThumbnailCache(tmp_path).get(original, _sha256(original), 128)
