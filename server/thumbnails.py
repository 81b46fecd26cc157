"""On-demand JPEG thumbnails, cached on disk by content hash and size."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from bisect import bisect_left
from pathlib import Path

from PIL import Image

from server.errors import InvalidQueryError
from server.preprocess import decode_photo

log = logging.getLogger(__name__)

# Requested sizes snap up to one of these, so a client asking for odd sizes cannot fill the disk.
THUMBNAIL_SIZES = (128, 256, 384, 512, 768, 1024)
DEFAULT_SIZE = 384  # a grid cell on a high-density phone screen
JPEG_QUALITY = 82
# Bump when the way thumbnails are made changes: new file names and ETags, so no client or disk keeps old ones.
THUMBNAIL_VERSION = 1


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
        # A grid asks for dozens of thumbnails at once; decoding them all together would only add memory
        # (full-size PNG/TIFF originals) without finishing sooner on a few cores.
        self._decoding = threading.BoundedSemaphore(max_concurrent or max(2, os.cpu_count() or 2))

    def path_for(self, content_hash: str, size: int) -> Path:
        key = content_hash.lower()
        if not key or not all(c in "0123456789abcdef" for c in key):
            key = hashlib.sha256(content_hash.encode()).hexdigest()  # keep file names safe whatever the hash is
        return self.directory / key[:2] / f"{key}-{size}-t{THUMBNAIL_VERSION}.jpg"

    def get(self, original: Path, content_hash: str, size: int) -> Path:
        """Returns the cached thumbnail, making it first if needed; raises ImageDecodeError for a bad original."""
        target = self.path_for(content_hash, size)
        if target.is_file():
            return target
        with self._decoding:
            if target.is_file():  # made by a request that held the semaphore before this one
                return target
            return self._make(original, target, size)

    def _make(self, original: Path, target: Path, size: int) -> Path:
        # decode_photo applies EXIF orientation and DCT-scales JPEGs, so big photos decode fast.
        image = decode_photo(original, min_side=size).image
        image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file, then rename: a concurrent reader sees the old state or the whole file.
        fd, tmp_name = tempfile.mkstemp(prefix=".thumb-", suffix=".jpg", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        log.debug("thumbnail %s (%d px) from %s", target.name, size, original)
        return target
