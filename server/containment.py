"""Which file a photo id may serve: the one place that decides, for originals and thumbnails alike."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from clipalbum.server.errors import NotFoundError
from clipalbum.server.pathnames import display
from clipalbum.server.store import PhotoRecord


def is_inside(real_path: str, real_folders: Iterable[str]) -> bool:
    """`real_path` is one of `real_folders` or below one (whole path components, never a string prefix)."""
    return any(os.path.commonpath([real_path, folder]) == folder for folder in real_folders)


def real_folders(folders: Iterable[Path | str]) -> tuple[str, ...]:
    """The real paths of `folders` (every symlink resolved now), as servable_path takes the album roots."""
    return tuple(os.path.realpath(folder) for folder in folders)


def servable_path(photo: PhotoRecord, real_roots: Iterable[str], allow_outside: bool = False) -> Path:
    """The real path of `photo`'s original, to open instead of the stored path.

    Serves only a photo that was read as one (indexed or pending, never failed), whose real path (every
    symlink resolved now, not when it was scanned) is a regular file inside one of `real_roots` (the album
    roots' real paths: real_folders; the Library keeps them, refreshed when the roots change), unless
    `allow_outside` (clipalbum's --follow-links-outside). Raises NotFoundError otherwise.
    """
    if photo.status == "failed":
        raise NotFoundError(f"photo {photo.id} could not be read as a photo ({photo.error}); nothing to serve")
    real = os.path.realpath(photo.original_path)
    if not allow_outside and not is_inside(real, real_roots):
        raise NotFoundError(f"photo {photo.id}'s file {display(photo.original_path)} now leads outside the "
                            "album folders; the next scan updates the index")
    try:
        mode = os.stat(real).st_mode
    except OSError:
        raise NotFoundError(f"photo {photo.id}'s file {display(photo.original_path)} is gone (moved or deleted); "
                            "the next scan updates the index") from None
    if not stat.S_ISREG(mode):
        raise NotFoundError(f"photo {photo.id}'s file {display(photo.original_path)} is not a regular file; "
                            "the next scan updates the index")
    return Path(real)
