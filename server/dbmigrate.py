"""`clipalbum db migrate`: copies a data directory's SQLite index into PostgreSQL, resumably.

Photos keep their ids (thumbnail files, bookmarked URLs and "more like this" links stay valid) and their
vectors (nothing is embedded again). Rows go over in id order, a chunk per transaction, so a run that is
stopped or killed goes on from the last committed chunk when started again.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import closing

import msgspec
from tqdm import tqdm

from clipalbum.server.errors import ClipalbumError
from clipalbum.server.pathnames import from_db
from clipalbum.server.pgstore import PgStore, pg_text, redacted
from clipalbum.server.settings import DataPaths, check_database_url
from clipalbum.server.store import Store, blob_vector

log = logging.getLogger(__name__)

CHUNK = 2000
# Settings of the data directory that travel with its photos (the ANN bookkeeping stays behind).
_META_KEYS = ("follow_links_outside", "walk_problems", "ann_model_id")
_SOURCE_COLUMNS = ("id", "root_id", "rel_path", "size", "mtime_ns", "content_hash", "width", "height", "taken_at",
                   "status", "error", "model_id", "vector", "vector_gen")


class MigrationSummary(msgspec.Struct):
    source: str
    database: str
    photos: int  # in the source
    copied: int  # by this run (the rest were there from an earlier one)
    models: list[str]
    seconds: float


def migrate(paths: DataPaths, url: str, progress: bool = True) -> MigrationSummary:
    """Copies the SQLite index of `paths` into the PostgreSQL database at `url` (created tables, built
    vector indexes), resuming a run that stopped. The SQLite file is only read."""
    check_database_url(url)
    if not paths.database.is_file():
        raise ClipalbumError(f"no index to migrate in {paths.root} (no {paths.database.name}); "
                             "give the data directory with --data-dir")
    started = time.perf_counter()
    origin = str(paths.database.resolve())  # recorded in the database: only this source resumes there
    with closing(Store(paths.database)) as source, closing(PgStore(url)) as target:
        _check_target(target, origin, url)
        target.set_meta({"migrated_from": origin})
        roots = {old: target.add_root(path) for old, path in source.roots()}
        total = int(source._reader.execute("SELECT COUNT(*) FROM photos").fetchone()[0])
        copied = _copy_photos(source, target, roots, total, progress)
        with target._transaction() as con:  # new photos get ids after the copied ones
            con.execute("SELECT setval(pg_get_serial_sequence('photos', 'id'), "
                        "GREATEST((SELECT COALESCE(MAX(id), 0) FROM photos), 1))")
        target.refresh_statistics()  # for the planner, before anyone searches
        values = {key: value for key in _META_KEYS if (value := source.get_meta(key)) is not None}
        values["generation"] = str(max(source.generation(), target.generation()) + 1)
        target.set_meta(values)
        models = [m for (m,) in target._reader.execute(
            "SELECT DISTINCT model_id FROM photos WHERE model_id IS NOT NULL ORDER BY 1")]
        for model_id in models:
            ndim = _model_dim(target, model_id)
            if progress:
                print(f"building the vector index of {model_id} ({ndim}-d) in the database", flush=True)
            target.ensure_vector_index(model_id, ndim)
        target.set_meta({"migration_complete": "1"})
    return MigrationSummary(source=str(paths.database), database=redacted(url), photos=total, copied=copied,
                            models=models, seconds=round(time.perf_counter() - started, 1))


def _check_target(target: PgStore, origin: str, url: str) -> None:
    """Refuses a database that holds photos from anywhere but an unfinished run of this same migration."""
    has_photos = target._reader.execute("SELECT EXISTS (SELECT 1 FROM photos)").fetchone()[0]
    came_from = target.get_meta("migrated_from")
    if came_from == origin and target.get_meta("migration_complete") == "1":
        raise ClipalbumError(f"{origin} was migrated into {redacted(url)} already; use it with --database "
                             "(to copy the data directory again, migrate into an empty database)")
    if has_photos and came_from != origin:
        where = f"the migration of {came_from}" if came_from else "indexing"
        raise ClipalbumError(f"{redacted(url)} already holds photos (from {where}); migrate into an empty "
                             "database, or keep using this one with --database")


def _copy_photos(source: Store, target: PgStore, roots: dict[int, int], total: int, progress: bool) -> int:
    """Copies the photos the target lacks, in id order, a chunk per transaction; returns how many."""
    last = int(target._reader.execute("SELECT COALESCE(MAX(id), 0) FROM photos").fetchone()[0])
    done = int(source._reader.execute("SELECT COUNT(*) FROM photos WHERE id <= ?", (last,)).fetchone()[0])
    copied = 0
    insert = (f"INSERT INTO photos ({', '.join(_SOURCE_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_SOURCE_COLUMNS))}) "
              "ON CONFLICT (id) DO NOTHING")
    with tqdm(total=total, initial=done, unit="photo", desc="migrating", disable=not progress) as bar:
        while True:
            rows = source._reader.execute(f"SELECT {', '.join(_SOURCE_COLUMNS)} FROM photos WHERE id > ? "
                                          "ORDER BY id LIMIT ?", (last, CHUNK)).fetchall()
            if not rows:
                return copied
            values = [(i, roots[root_id], os.fsencode(from_db(rel)), size, mtime, hash_, w, h, pg_text(taken),
                       status, pg_text(error), model, None if blob is None else blob_vector(blob), gen)
                      for i, root_id, rel, size, mtime, hash_, w, h, taken, status, error, model, blob, gen in rows]
            with target._transaction() as con, con.cursor() as cur:
                cur.executemany(insert, values)
            last = int(rows[-1][0])
            copied += len(rows)
            bar.update(len(rows))


def _model_dim(target: PgStore, model_id: str) -> int:
    return int(target._reader.execute("SELECT vector_dims(vector) FROM photos WHERE model_id = %s LIMIT 1",
                                      (model_id,)).fetchone()[0])
