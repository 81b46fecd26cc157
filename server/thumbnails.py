"""On-demand JPEG thumbnails, cached on disk by content hash and size."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from bisect import bisect_left
from pathlib import Path

from PIL import Image

from clipalbum.server.diskerrors import storage_problem
from clipalbum.server.errors import InvalidQueryError, ServerBusyError
from clipalbum.server.preprocess import decode_photo

log = logging.getLogger(__name__)

# Requested sizes snap up to one of these, so a client asking for odd sizes cannot fill the disk.
THUMBNAIL_SIZES = (128, 256, 384, 512, 768, 1024)
DEFAULT_SIZE = 384  # a grid cell on a high-density phone screen
JPEG_QUALITY = 82
# Bump when the way thumbnails are made changes: new file names and ETags, so no client or disk keeps old ones.
THUMBNAIL_VERSION = 1
# Thumbnails decoded at once: a grid asks for dozens, and decoding them all together would only add memory
# (full-size PNG/TIFF originals) without finishing sooner on a few cores.
THUMBNAIL_DECODES = max(2, os.cpu_count() or 2)
# A write goes to DIR/ab/.thumb-XXXXXXXX.part first (real thumbnails never start with a dot), then is renamed.
TEMP_PREFIX = ".thumb-"
# A temporary file older than this is a leftover of a killed process (a write takes milliseconds: the JPEG
# is encoded in memory before the file is made).
STALE_TEMP_SECONDS = 600


def snap_size(requested: int | None) -> int:
    """The cached size that serves a request for `requested` pixels on the long side."""
    if requested is None:
        return DEFAULT_SIZE
    if requested < 1 or requested > THUMBNAIL_SIZES[-1]:
        raise InvalidQueryError(f"thumbnail size must be between 1 and {THUMBNAIL_SIZES[-1]}, got {requested}")
    return THUMBNAIL_SIZES[bisect_left(THUMBNAIL_SIZES, requested)]


def thumbnail_etag(content_hash: str, size: int) -> str:
    """A strong ETag: the thumbnail depends only on the original's bytes and the size."""
    return f'"t{THUMBNAIL_VERSION}-{content_hash[:32]}-{size}"'


class ThumbnailCache:
    """Makes thumbnails from originals (read only) into DIR/ab/<hash>-<size>.jpg, written atomically."""

    def __init__(self, directory: Path, max_concurrent: int | None = None) -> None:
        self.directory = Path(directory)
        self._decoding = threading.BoundedSemaphore(max_concurrent or THUMBNAIL_DECODES)
        self._unwritable = False  # warned that the cache cannot be written; cleared when a write works again
        # Off the start-up path: a cold cache of 100k thumbnails on a slow disk takes a while to list.
        self.sweeper = threading.Thread(target=self.sweep_temporary_files, name="thumbnail-sweep", daemon=True)
        self.sweeper.start()

    def path_for(self, content_hash: str, size: int) -> Path:
        key = content_hash.lower()
        if not key or not all(c in "0123456789abcdef" for c in key):
            key = hashlib.sha256(content_hash.encode()).hexdigest()  # keep file names safe whatever the hash is
        return self.directory / key[:2] / f"{key}-{size}-t{THUMBNAIL_VERSION}.jpg"

    def cached(self, content_hash: str, size: int) -> Path | None:
        """The thumbnail's file if it is made already."""
        target = self.path_for(content_hash, size)
        return target if target.is_file() else None

    def get(self, original: Path, content_hash: str, size: int, wait: float | None = None) -> Path | bytes:
        """The cached thumbnail, made first if needed; its JPEG bytes instead when the cache cannot be written
        (disk full, read-only). Raises ImageDecodeError for a bad original, and ServerBusyError when making it
        would wait more than `wait` seconds (None: as long as it takes) for a decode slot and memory."""
        if (target := self.cached(content_hash, size)) is not None:
            return target
        deadline = None if wait is None else time.monotonic() + wait
        if not self._decoding.acquire(timeout=wait):  # None: as long as it takes
            raise ServerBusyError("the server is making other thumbnails; try again in a few seconds")
        try:
            if (target := self.cached(content_hash, size)) is not None:  # made while this one waited
                return target
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._make(original, self.path_for(content_hash, size), size, left)
        finally:
            self._decoding.release()

    def _make(self, original: Path, target: Path, size: int, wait: float | None) -> Path | bytes:
        # decode_photo applies EXIF orientation and DCT-scales JPEGs, so big photos decode fast.
        image = decode_photo(original, min_side=size, wait=wait).image
        image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
        encoded = io.BytesIO()
        image.save(encoded, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
        jpeg = encoded.getvalue()
        try:
            self._write(jpeg, target)
        except OSError as exc:
            if (problem := storage_problem(exc, self.directory)) is None:
                raise
            if not self._unwritable:
                log.warning("thumbnails are served but not cached: %s", problem)
                self._unwritable = True
            return jpeg
        self._unwritable = False
        log.debug("thumbnail %s (%d px) from %s", target.name, size, original)
        return target

    @staticmethod
    def _write(jpeg: bytes, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file, then rename: a concurrent reader sees the old state or the whole file.
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(jpeg)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def sweep_temporary_files(self) -> int:
        """Removes temporary files that a killed process left (older than STALE_TEMP_SECONDS: a younger one
        may be a write in progress, in this process or another); returns how many."""
        removed, stale_before = 0, time.time() - STALE_TEMP_SECONDS
        try:
            shards = [entry for entry in os.scandir(self.directory) if entry.is_dir(follow_symlinks=False)]
        except OSError:  # no cache yet, or not readable: nothing to sweep
            return 0
        for shard in shards:
            try:
                with os.scandir(shard.path) as entries:
                    leftovers = [entry for entry in entries if entry.name.startswith(TEMP_PREFIX)]
                for entry in leftovers:
                    if entry.stat(follow_symlinks=False).st_mtime < stale_before:
                        os.unlink(entry.path)
                        removed += 1
            except OSError as exc:  # gone meanwhile, or a read-only cache: leave it
                log.debug("thumbnail sweep skips %s: %s", shard.path, exc)
        if removed:
            log.info("removed %d unfinished thumbnail file(s) from %s", removed, self.directory)
        return removed
