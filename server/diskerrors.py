"""Plain messages for a data directory that is full or read-only: OS, SQLite and usearch errors say it
obscurely ("disk I/O error", "unable to open database file", "Failed to serialize into stream")."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from clipalbum.server.errors import ClipalbumError

LOW_SPACE_BYTES = 1 << 20  # below this much free space, a vague write error is taken for a full disk


class StorageError(ClipalbumError):
    """The data directory cannot be written: its disk is full, or it is read-only."""


def _free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def storage_problem(exc: BaseException, folder: Path) -> StorageError | None:
    """A StorageError saying what to do when `exc` came from a full or read-only `folder`; None otherwise."""
    if not isinstance(exc, (OSError, sqlite3.Error)):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc).lower()
    full = code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text
    read_only = code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly database" in text
    if not (full or read_only):  # a vague error ("disk I/O error"): look at the folder itself
        try:
            read_only = not os.access(folder, os.W_OK)
            full = not read_only and _free_bytes(folder) < LOW_SPACE_BYTES
        except OSError:
            return None
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if full:
        return StorageError(f"no space left on the disk that holds {folder} ({reason}); free some space and "
                            "run it again: what was indexed so far is kept")
    if read_only:
        return StorageError(f"cannot write to {folder}: the data directory is read-only or not yours "
                            f"({reason}); give a writable one with --data-dir or CLIPALBUM_DATA_DIR")
    return None
