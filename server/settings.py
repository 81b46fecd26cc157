"""Where clipalbum keeps its data: the data directory and the paths inside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipalbum.server.errors import ClipalbumError

APP_NAME = "clipalbum"


def default_data_dir() -> Path:
    """$CLIPALBUM_DATA_DIR, else $XDG_DATA_HOME/clipalbum, else ~/.local/share/clipalbum."""
    if env := os.environ.get("CLIPALBUM_DATA_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / APP_NAME


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class DataPaths:
    root: Path
    # A PostgreSQL database (with pgvector) that holds the index instead of the SQLite file in `root`
    # (the access token stays in `root`).
    database_url: str | None = None
    # Where thumbnails are cached instead of root/thumbnails: a folder several servers of one database can
    # share (they are named by content hash and size, so any server's copy serves all).
    thumbnail_dir: Path | None = None

    @property
    def database(self) -> Path:
        return self.root / "index.sqlite3"

    @property
    def ann_index(self) -> Path:
        return self.root / "vectors.ivf"

    @property
    def legacy_ann_index(self) -> Path:
        return self.root / "vectors.usearch"  # the HNSW graph of versions before the inverted lists

    @property
    def thumbnails(self) -> Path:
        return self.thumbnail_dir or self.root / "thumbnails"

    @property
    def token(self) -> Path:
        return self.root / "token"  # the access token for serving beyond loopback (mode 0600)

    @property
    def legacy_bundle(self) -> Path:
        return self.root / "models" / "default"  # before the shared model cache (server/model_cache.py)

    def ensure(self) -> "DataPaths":
        self.root.mkdir(parents=True, exist_ok=True)
        self.thumbnails.mkdir(parents=True, exist_ok=True)
        return self


def data_paths(data_dir: str | Path | None = None, database: str | None = None,
               thumbnails: str | Path | None = None) -> DataPaths:
    """The data directory (default_data_dir() when not given), the database (`database`, else
    $CLIPALBUM_DATABASE, else none: the data directory's SQLite file) and the thumbnail folder (default: in
    the data directory)."""
    database = database or os.environ.get("CLIPALBUM_DATABASE") or None
    return DataPaths(Path(data_dir).expanduser() if data_dir else default_data_dir(), database,
                     Path(thumbnails).expanduser() if thumbnails else None)


def check_database_url(url: str) -> str:
    """`url` if it names a PostgreSQL database, else a ClipalbumError that says what is expected."""
    if not url.startswith(POSTGRES_SCHEMES):
        raise ClipalbumError(f"the database must be a PostgreSQL URL (postgresql://user@host/dbname), not "
                             f"{url.split('://')[0]!r}; leave it out to keep the index in the data directory")
    return url
