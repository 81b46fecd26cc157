"""The photo index's source of truth: an SQLite database (WAL) with one row per photo, vector included.
(server/pgstore.py keeps the same records in PostgreSQL; open_store picks one for a data directory.)"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from clipalbum.server.diskerrors import storage_problem
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.pathnames import display, from_db, to_db
from clipalbum.server.settings import DataPaths, check_database_url

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
-- AUTOINCREMENT: a photo id is never reused, so a stale client URL or ANN key can't point at another photo.
CREATE TABLE IF NOT EXISTS photos (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    root_id INTEGER NOT NULL REFERENCES roots(id),
    rel_path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT,
    width INTEGER,
    height INTEGER,
    taken_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('indexed', 'failed')),
    error TEXT,
    model_id TEXT,  -- set exactly when there is a vector
    vector BLOB,  -- float32, the model's embed_dim
    vector_gen INTEGER NOT NULL DEFAULT 0,  -- the generation that wrote the vector (ANN catch-up)
    UNIQUE (root_id, rel_path)
);
"""
# A model switch's vectors, written beside the current ones while those keep answering (server/modelswitch.py)
# and moved into `photos` in one transaction when every indexed photo has one. A row is dropped with its photo,
# and when the photo's file changes (the scan embeds it again, so the row's vector describes old pixels).
_STAGING = [
    """CREATE TABLE IF NOT EXISTS staged_vectors (
           id INTEGER PRIMARY KEY REFERENCES photos(id) ON DELETE CASCADE,
           model_id TEXT NOT NULL,
           vector BLOB,  -- NULL: the file could not be read for this model (error says why)
           error TEXT)""",
    # A switch's progress counts its rows through this small index, not the table's pages (4 KB a row at 512-d).
    "CREATE INDEX IF NOT EXISTS staged_by_model ON staged_vectors (model_id)",
    """CREATE TRIGGER IF NOT EXISTS staged_vectors_stale AFTER UPDATE OF size, mtime_ns, content_hash ON photos
       WHEN OLD.size IS NOT NEW.size OR OLD.mtime_ns IS NOT NEW.mtime_ns OR OLD.content_hash IS NOT NEW.content_hash
       BEGIN
           DELETE FROM staged_vectors WHERE id = NEW.id;
       END""",
]
_INDEXES = """
CREATE INDEX IF NOT EXISTS photos_by_hash ON photos (content_hash);
CREATE INDEX IF NOT EXISTS photos_by_model_taken ON photos (model_id, taken_at);
CREATE INDEX IF NOT EXISTS photos_by_model_gen ON photos (model_id, vector_gen);
-- Status counts read this small covering index, not the table and its vectors (122 -> 16 ms at 100k).
CREATE INDEX IF NOT EXISTS photos_by_status_model ON photos (status, model_id);
"""

# Photos by (status, model), kept by triggers in the transaction that changes them: the status counts that
# the web page polls (every 0.5 s during a scan) took 230 ms at 1M photos as a GROUP BY over the index.
# A failed photo has no model: '' stands for it here, so the pair can be the key.
_COUNTS = (
    """CREATE TABLE IF NOT EXISTS photo_counts (status TEXT NOT NULL, model TEXT NOT NULL, n INTEGER NOT NULL,
                                                PRIMARY KEY (status, model)) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS photo_counts_insert AFTER INSERT ON photos BEGIN
           INSERT INTO photo_counts VALUES (NEW.status, COALESCE(NEW.model_id, ''), 1)
               ON CONFLICT (status, model) DO UPDATE SET n = n + 1;
       END""",
    """CREATE TRIGGER IF NOT EXISTS photo_counts_delete AFTER DELETE ON photos BEGIN
           UPDATE photo_counts SET n = n - 1 WHERE status = OLD.status AND model = COALESCE(OLD.model_id, '');
       END""",
    """CREATE TRIGGER IF NOT EXISTS photo_counts_update AFTER UPDATE OF status, model_id ON photos
       WHEN OLD.status IS NOT NEW.status OR OLD.model_id IS NOT NEW.model_id BEGIN
           UPDATE photo_counts SET n = n - 1 WHERE status = OLD.status AND model = COALESCE(OLD.model_id, '');
           INSERT INTO photo_counts VALUES (NEW.status, COALESCE(NEW.model_id, ''), 1)
               ON CONFLICT (status, model) DO UPDATE SET n = n + 1;
       END""",
)

MAX_WALK_PROBLEMS = 1000  # kept in the meta table; a broken disk must not grow it without bound

PhotoStatus = Literal["indexed", "pending", "failed"]


class PhotoRecord(msgspec.Struct):
    """One photo as the index knows it (status 'pending': embedded by another model, waiting to re-embed).
    `root` and `rel_path` are Python file names (surrogate-escaped when not UTF-8): display() them to show."""

    id: int
    root: str
    rel_path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None
    height: int | None
    taken_at: str | None
    status: PhotoStatus
    error: str | None
    model_id: str | None

    @property
    def original_path(self) -> Path:
        """The original file's absolute path."""
        return Path(self.root) / self.rel_path


@dataclass(frozen=True)
class FileState:
    """What a scan needs to decide whether a known file changed."""

    id: int
    size: int
    mtime_ns: int
    status: str
    model_id: str | None
    content_hash: str | None


@dataclass(frozen=True)
class VectorRow:
    """A photo with its vector, for ranking and building hits."""

    id: int
    root: str
    rel_path: str
    width: int | None
    height: int | None
    taken_at: str | None
    vector: npt.NDArray[np.float32]


@dataclass(frozen=True)
class StagingJob:
    """An indexed photo to embed with the model being switched to, as it was when listed."""

    id: int
    root: str
    rel_path: str
    size: int
    mtime_ns: int

    @property
    def original_path(self) -> Path:
        return Path(self.root) / self.rel_path


@dataclass(frozen=True)
class PhotoFields:
    """Everything a scan writes for one file (vector None for a failed file)."""

    root_id: int
    rel_path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    error: str | None = None
    model_id: str | None = None
    vector: npt.NDArray[np.float32] | None = None


def vector_blob(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def blob_vector(blob: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(blob, dtype=np.float32)


class IndexBusyError(ClipalbumError):
    """A scan is already running (in this process or another one on the same data directory or database)."""


def open_store(paths: DataPaths) -> "Store":
    """The data directory's store: its SQLite file, or the PostgreSQL database it is configured with."""
    if paths.database_url:
        from clipalbum.server.pgstore import PgStore  # psycopg: the optional [postgres] extra

        return PgStore(check_database_url(paths.database_url))  # type: ignore[return-value]  # same interface
    return Store(paths.database)


class MetaRecords:
    """What both stores keep in their meta table (key -> text), on top of get_meta and set_meta."""

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        raise NotImplementedError

    def set_meta(self, values: dict[str, str]) -> None:
        raise NotImplementedError

    def apply(self, changes: "Changes") -> tuple[list[tuple[int, npt.NDArray[np.float32]]], list[int]]:
        raise NotImplementedError

    def generation(self) -> int:
        """Bumped by every transaction that changes photos; the ANN file records the one it was saved at."""
        return int(self.get_meta("generation", "0") or 0)

    def delete(self, ids: Iterable[int]) -> None:
        changes = Changes()
        changes.deletes.extend(ids)
        self.apply(changes)

    def set_walk_problems(self, problems: list[tuple[str, str]]) -> None:
        """Keeps the last scan's (path, problem) list: folders and links that are not files, so no row holds
        them (a symlink loop, a link outside the albums, an unreadable or over-long folder). Written only
        when they changed: a rescan that finds nothing new writes nothing (a full or read-only disk is fine)."""
        shown = [(display(path), display(problem)) for path, problem in problems[:MAX_WALK_PROBLEMS]]
        value = msgspec.json.encode(shown).decode()
        if value != self.get_meta("walk_problems", "[]"):
            self.set_meta({"walk_problems": value})

    def walk_problems(self) -> list[tuple[str, str]]:
        """(path, problem) pairs the last scan met while walking the album folders."""
        return [tuple(p) for p in msgspec.json.decode(self.get_meta("walk_problems", "[]") or "[]",
                                                      type=list[tuple[str, str]])]


class Store(MetaRecords):
    """SQLite access. Writes go through one connection under a lock, in explicit transactions; reads use a
    connection per thread, so searches never wait for an indexing transaction (WAL)."""

    keeps_vector_index = False  # the ANN index is a usearch file beside it (server/ann.py)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._writer = self._connect()
        self._migrate()

    # -- connections ---------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
            con.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (only a power cut may lose the last commits).
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise (storage_problem(exc, self.path.parent)
                   or ClipalbumError(f"cannot open the index database {self.path}: {exc}")) from exc
        with self._all_lock:
            self._all.append(con)
        return con

    @property
    def _reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
        return con

    def close(self) -> None:
        with self._all_lock:
            for con in self._all:
                try:
                    con.close()
                except sqlite3.Error:  # closing from another thread than the one using it; harmless
                    pass
            self._all.clear()

    @contextmanager
    def exclusive_writer(self) -> Iterator[None]:
        """An exclusive lock on the data directory across processes: one indexer at a time."""
        with open(self.path.parent / "index.lock", "a+b") as lock_file:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise IndexBusyError(f"another clipalbum process is indexing {self.path.parent}; "
                                     "wait for it to finish") from exc
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def compact(self) -> tuple[int, int]:
        """Gives the file back the space that deleted rows left (a finished model switch's staged vectors,
        removed photos), which SQLite otherwise keeps for later writes: VACUUM, under the indexers' lock.
        Searches go on meanwhile (WAL); the file needs room for a copy of itself while it runs. Row ids are
        kept (every table's key is an INTEGER PRIMARY KEY), so the vector index stays valid. Returns the
        database's bytes (file and WAL) before and after."""
        with self.exclusive_writer(), self._write_lock:
            before = self.size_bytes()
            self._writer.execute("VACUUM")
            return before, self.size_bytes()

    def size_bytes(self) -> int:
        """The database's bytes on disk, file and WAL, after a checkpoint."""
        self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists())

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._writer, self._write_lock)

    def _migrate(self) -> None:
        with self._write_lock:
            self._writer.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS)
        with self._transaction() as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            have = int(row[0]) if row else 0
            if have > SCHEMA_VERSION:
                raise ClipalbumError(
                    f"the index at {self.path} was written by a newer clipalbum (schema {have} > {SCHEMA_VERSION}); "
                    "upgrade clipalbum or use another --data-dir"
                )
            if 0 < have < 2:
                # vector_gen lets start-up bring a saved ANN index up to date instead of rebuilding it.
                con.execute("ALTER TABLE photos ADD COLUMN vector_gen INTEGER NOT NULL DEFAULT 0")
            if have < 3:  # the counts start from the photos there are, in the transaction that adds the triggers
                for statement in _COUNTS:
                    con.execute(statement)
                con.execute("DELETE FROM photo_counts")
                con.execute("INSERT INTO photo_counts SELECT status, COALESCE(model_id, ''), COUNT(*) FROM photos "
                            "GROUP BY 1, 2")
            if have < SCHEMA_VERSION:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        with self._transaction() as con:
            for statement in _STAGING:  # idempotent (IF NOT EXISTS); an older clipalbum ignores them
                con.execute(statement)
        with self._write_lock:
            self._writer.executescript(_INDEXES)

    def refresh_statistics(self) -> None:
        """Nothing to do: the hot queries' plans don't depend on statistics here (their '+' operators pin
        them to the primary key; tests/test_store.py asserts them)."""

    # -- meta ----------------------------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._reader.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, values: dict[str, str]) -> None:
        with self._transaction() as con:
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    # -- roots ---------------------------------------------------------------------------------------------

    def add_root(self, path: Path) -> int:
        stored = to_db(str(path))
        with self._transaction() as con:
            con.execute("INSERT OR IGNORE INTO roots (path) VALUES (?)", (stored,))
            return int(con.execute("SELECT id FROM roots WHERE path = ?", (stored,)).fetchone()[0])

    def roots(self) -> list[tuple[int, Path]]:
        return [(int(i), Path(from_db(p))) for i, p in self._reader.execute("SELECT id, path FROM roots ORDER BY id")]

    # -- scanning ------------------------------------------------------------------------------------------

    def file_states(self, root_id: int) -> dict[str, FileState]:
        rows = self._reader.execute(
            "SELECT rel_path, id, size, mtime_ns, status, model_id, content_hash FROM photos WHERE root_id = ?",
            (root_id,),
        )
        return {from_db(rel): FileState(*rest) for rel, *rest in rows}

    def embedded_hashes(self, model_id: str) -> set[str]:
        """Content hashes that already have a vector from this model (so their photos need no decoding)."""
        rows = self._reader.execute(
            "SELECT DISTINCT content_hash FROM photos WHERE status = 'indexed' AND model_id = ? "
            "AND content_hash IS NOT NULL", (model_id,))
        return {h for (h,) in rows}

    def embedded_by_hash(self, content_hash: str, model_id: str) -> list[int]:
        rows = self._writer_read(
            "SELECT id FROM photos WHERE content_hash = ? AND status = 'indexed' AND model_id = ? ORDER BY id",
            (content_hash, model_id))
        return [int(i) for (i,) in rows]

    def _writer_read(self, sql: str, params: tuple) -> list[tuple]:
        # Reads that must see this process's own latest commits, through the writer connection.
        with self._write_lock:
            return self._writer.execute(sql, params).fetchall()

    def apply(self, changes: "Changes") -> tuple[list[tuple[int, npt.NDArray[np.float32]]], list[int]]:
        """Writes one batch of scan results in one transaction (and bumps the generation).

        Returns what the ANN index must do to follow: (photo id, vector) pairs to add, photo ids to remove.
        """
        added: list[tuple[int, npt.NDArray[np.float32]]] = []
        removed: list[int] = []
        with self._transaction() as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            generation = int(row[0]) + 1 if row else 1
            for photo_id in changes.deletes:
                con.execute("DELETE FROM photos WHERE id = ?", (photo_id,))
                removed.append(photo_id)
            for photo_id, root_id, rel_path, size, mtime_ns in changes.moves:
                con.execute("UPDATE photos SET root_id = ?, rel_path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                            (root_id, to_db(rel_path), size, mtime_ns, photo_id))
            for photo_id, fields in changes.writes:
                new_id = self._write_photo(con, photo_id, fields, generation)
                if fields.vector is None:
                    removed.append(new_id)
                else:
                    added.append((new_id, np.asarray(fields.vector, dtype=np.float32)))
            for photo_id, source_id, fields in changes.copies:
                added.append(self._copy_photo(con, photo_id, source_id, fields, generation))
            con.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(generation),))
        return added, removed

    @staticmethod
    def _write_photo(con: sqlite3.Connection, photo_id: int | None, f: PhotoFields, generation: int) -> int:
        status = "failed" if f.vector is None else "indexed"
        blob = None if f.vector is None else vector_blob(f.vector)
        model_id = None if f.vector is None else f.model_id  # a model_id always means a vector
        error = None if f.error is None else display(f.error)  # a decoder's message may quote a file name
        values = (f.root_id, to_db(f.rel_path), f.size, f.mtime_ns, f.content_hash, f.width, f.height, f.taken_at,
                  status, error, model_id, blob, generation)
        if photo_id is None:
            cur = con.execute(
                "INSERT INTO photos (root_id, rel_path, size, mtime_ns, content_hash, width, height, taken_at, "
                "status, error, model_id, vector, vector_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            return int(cur.lastrowid)
        con.execute(
            "UPDATE photos SET root_id = ?, rel_path = ?, size = ?, mtime_ns = ?, content_hash = ?, width = ?, "
            "height = ?, taken_at = ?, status = ?, error = ?, model_id = ?, vector = ?, vector_gen = ? WHERE id = ?",
            (*values, photo_id))
        return photo_id

    @staticmethod
    def _copy_photo(con: sqlite3.Connection, photo_id: int | None, source_id: int, f: PhotoFields,
                    generation: int) -> tuple[int, npt.NDArray[np.float32]]:
        # A second copy of an embedded photo: same pixels, so same vector, size and capture time.
        row = con.execute("SELECT width, height, taken_at, model_id, vector FROM photos WHERE id = ?",
                          (source_id,)).fetchone()
        width, height, taken_at, model_id, blob = row
        fields = PhotoFields(f.root_id, f.rel_path, f.size, f.mtime_ns, f.content_hash, width, height, taken_at,
                             None, model_id, blob_vector(blob))
        return Store._write_photo(con, photo_id, fields, generation), fields.vector

    # -- vectors and search --------------------------------------------------------------------------------

    def vector_checksum(self, model_id: str) -> tuple[int, int]:
        """(count, sum of ids) of the photos embedded by `model_id`: what the ANN index must hold."""
        count, total = self._reader.execute(
            "SELECT COUNT(*), COALESCE(SUM(id), 0) FROM photos WHERE status = 'indexed' AND model_id = ?",
            (model_id,)).fetchone()
        return int(count), int(total)

    def iter_vectors(self, model_id: str, chunk: int = 4096, since: int = -1
                     ) -> Iterator[tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]]:
        """(ids, vectors) of one model in chunks: all of them (to rebuild the ANN index), or those written
        after generation `since` (to bring a saved one up to date)."""
        return by_id(lambda last: self._reader.execute(
            "SELECT id, vector FROM photos WHERE model_id = ? AND vector_gen > ? AND id > ? ORDER BY id LIMIT ?",
            (model_id, since, last, chunk)).fetchall(), blob_vector)

    def embedded_ids(self, model_id: str) -> npt.NDArray[np.uint64]:
        """Ids of every photo embedded by `model_id` (what the ANN index must hold)."""
        rows = self._reader.execute("SELECT id FROM photos WHERE model_id = ?", (model_id,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.uint64, count=len(rows))

    def embedded_count(self) -> int:
        """Photos with a vector, whichever model embedded them (`clipalbum search` on an empty index)."""
        return self._reader.execute("SELECT COUNT(*) FROM photos WHERE model_id IS NOT NULL").fetchone()[0]

    def vector_rows(self, ids: Iterable[int], model_id: str) -> list[VectorRow]:
        """Rows with their vectors for the given ids (those embedded by `model_id`; others are left out)."""
        out: list[VectorRow] = []
        for part, marks in _id_batches(ids):
            rows = self._reader.execute(
                "SELECT p.id, r.path, p.rel_path, p.width, p.height, p.taken_at, p.vector FROM photos p "
                f"JOIN roots r ON r.id = p.root_id WHERE p.id IN ({marks}) AND +p.status = 'indexed' "
                # '+' keeps SQLite on the primary key: through the (status, model_id) or (model_id, taken_at)
                # index it would read every photo of the model (24 ms at 100k photos instead of 0.14 ms).
                # tests/test_store.py asserts the plans of the hot queries.
                "AND +p.model_id = ?", (*part, model_id))
            out.extend(VectorRow(i, from_db(root), from_db(rel), w, h, t, blob_vector(v))
                       for i, root, rel, w, h, t, v in rows)
        return out

    def count_taken_between(self, model_id: str, start: str | None, end: str | None) -> int:
        """How many embedded photos have an EXIF capture time in [start, end) (ISO strings sort as times)."""
        sql, params = window_condition(start, end)
        return int(self._reader.execute(f"SELECT COUNT(*) FROM photos WHERE model_id = ?{sql}",
                                        (model_id, *params)).fetchone()[0])

    def ids_taken_between(self, model_id: str, start: str | None, end: str | None) -> list[int]:
        """Embedded photos whose EXIF capture time is in [start, end); undated photos never match."""
        sql, params = window_condition(start, end)
        return [int(i) for (i,) in self._reader.execute(f"SELECT id FROM photos WHERE model_id = ?{sql}",
                                                        (model_id, *params))]

    def vectors_taken_between(self, model_id: str, start: str | None, end: str | None
                              ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(ids, vectors) of the embedded photos taken in [start, end), for ranking a small window exactly."""
        sql, params = window_condition(start, end)
        rows = self._reader.execute(f"SELECT id, vector FROM photos WHERE model_id = ?{sql}",
                                    (model_id, *params)).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)

    def taken_at(self, ids: list[int]) -> dict[int, str | None]:
        """Capture times of the given photos (a light lookup to filter ANN candidates by date)."""
        out: dict[int, str | None] = {}
        for part, marks in _id_batches(ids):
            out.update(self._reader.execute(f"SELECT id, taken_at FROM photos WHERE id IN ({marks})", part))
        return out

    # -- a model switch's vectors (server/modelswitch.py) ------------------------------------------------

    def to_restage(self, model_id: str, after_id: int, limit: int) -> list[StagingJob]:
        """Indexed photos with id > `after_id` that have neither a vector of `model_id` nor a staged one,
        by id (a cursor over the primary key: each call reads only the rows it returns and those it skips)."""
        rows = self._reader.execute(
            "SELECT p.id, r.path, p.rel_path, p.size, p.mtime_ns FROM photos p JOIN roots r ON r.id = p.root_id "
            # '+': on the primary key from the cursor on (through the (status, model_id) index SQLite would
            # read and sort every indexed photo at each call; tests/test_store.py asserts the plan).
            "WHERE p.id > ? AND +p.status = 'indexed' AND +p.model_id IS NOT ? AND NOT EXISTS "
            "(SELECT 1 FROM staged_vectors s WHERE s.id = p.id AND s.model_id = ?) ORDER BY p.id LIMIT ?",
            (after_id, model_id, model_id, limit))
        return [StagingJob(int(i), from_db(root), from_db(rel), int(size), int(mtime))
                for i, root, rel, size, mtime in rows]

    def stage(self, model_id: str, jobs: list[StagingJob], vectors: list[npt.NDArray[np.float32] | None],
              errors: list[str | None]) -> int:
        """Keeps `model_id`'s vector (or why there is none) for each job's photo, unless the photo changed
        since the job was read (its file's size or time): that one is listed again. Returns how many were kept."""
        kept = 0
        with self._transaction() as con:
            for job, vector, error in zip(jobs, vectors, errors):
                kept += con.execute(
                    "INSERT OR REPLACE INTO staged_vectors SELECT id, ?, ?, ? FROM photos "
                    "WHERE id = ? AND size = ? AND mtime_ns = ? AND status = 'indexed'",
                    (model_id, None if vector is None else vector_blob(vector), None if error is None else display(error),
                     job.id, job.size, job.mtime_ns)).rowcount
        return kept

    def staging_counts(self, model_id: str) -> tuple[int, int]:
        """(photos staged for `model_id`, indexed photos that need it): a switch's progress."""
        staged = self._reader.execute("SELECT COUNT(*) FROM staged_vectors WHERE model_id = ?",
                                      (model_id,)).fetchone()[0]
        counts = self.counts(model_id)
        return int(staged), counts["pending"]

    def iter_switch_vectors(self, model_id: str, chunk: int = 4096
                            ) -> Iterator[tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]]:
        """(ids, vectors) of what `model_id` will serve after the switch: its staged vectors and the photos
        it embedded already (to build its ANN index before the swap)."""
        yield from self.iter_vectors(model_id, chunk)
        yield from by_id(lambda last: self._reader.execute(
            "SELECT id, vector FROM staged_vectors WHERE model_id = ? AND vector IS NOT NULL AND id > ? "
            "ORDER BY id LIMIT ?", (model_id, last, chunk)).fetchall(), blob_vector)

    def promote_staged(self, model_id: str) -> bool:
        """In one transaction, when every indexed photo has a vector of `model_id` or a staged one: moves the
        staged vectors into the photos (a photo staged without one becomes failed, with its error) and drops
        every staged row. False, changing nothing, when some photo still needs one."""
        with self._transaction() as con:
            missing = con.execute(
                "SELECT 1 FROM photos p WHERE p.status = 'indexed' AND p.model_id IS NOT ? AND NOT EXISTS "
                "(SELECT 1 FROM staged_vectors s WHERE s.id = p.id AND s.model_id = ?) LIMIT 1",
                (model_id, model_id)).fetchone()
            if missing is not None:
                return False
            row = con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            generation = int(row[0]) + 1 if row else 1
            con.execute("UPDATE photos SET model_id = ?, vector = s.vector, vector_gen = ? FROM staged_vectors s "
                        "WHERE s.id = photos.id AND s.model_id = ? AND s.vector IS NOT NULL "
                        "AND photos.status = 'indexed'", (model_id, generation, model_id))
            con.execute("UPDATE photos SET status = 'failed', error = s.error, model_id = NULL, vector = NULL, "
                        "vector_gen = ? FROM staged_vectors s WHERE s.id = photos.id AND s.model_id = ? "
                        "AND s.vector IS NULL AND photos.status = 'indexed'", (generation, model_id))
            con.execute("DELETE FROM staged_vectors")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(generation),))
        return True

    def discard_staged(self, keep_model_id: str | None = None) -> int:
        """Drops staged vectors of every model but `keep_model_id` (a switch abandoned for another one).
        Called at every server start: it reads first, and writes only when there is something to drop."""
        if self._reader.execute("SELECT 1 FROM staged_vectors WHERE model_id IS NOT ? LIMIT 1",
                                (keep_model_id,)).fetchone() is None:
            return 0
        with self._transaction() as con:
            return con.execute("DELETE FROM staged_vectors WHERE model_id IS NOT ?", (keep_model_id,)).rowcount

    # -- records and status --------------------------------------------------------------------------------

    def photo(self, photo_id: int, model_id: str) -> PhotoRecord | None:
        row = self._reader.execute(
            "SELECT p.id, r.path, p.rel_path, p.size, p.mtime_ns, p.content_hash, p.width, p.height, p.taken_at, "
            "p.status, p.error, p.model_id FROM photos p JOIN roots r ON r.id = p.root_id WHERE p.id = ?",
            (photo_id,)).fetchone()
        if row is None:
            return None
        photo_id, root, rel, *head, status, error, row_model = row
        if status == "indexed" and row_model != model_id:
            status = "pending"
        return PhotoRecord(photo_id, from_db(root), from_db(rel), *head, status=status, error=error,
                           model_id=row_model)

    def vector(self, photo_id: int) -> tuple[str | None, npt.NDArray[np.float32] | None]:
        row = self._reader.execute("SELECT model_id, vector FROM photos WHERE id = ?", (photo_id,)).fetchone()
        if row is None or row[1] is None:
            return (row[0] if row else None), None
        return row[0], blob_vector(row[1])

    def counts(self, model_id: str) -> dict[str, int]:
        """Photos by status for the current model: indexed, pending (embedded by another model), failed."""
        return status_counts(((status, model or None, n) for status, model, n in self._reader.execute(
            "SELECT status, model, n FROM photo_counts")), model_id)

    def failures(self, limit: int) -> list[tuple[str, str, str]]:
        """(root, rel_path, error) of failed files, most recently changed first."""
        rows = self._reader.execute(
            "SELECT r.path, p.rel_path, COALESCE(p.error, '') FROM photos p JOIN roots r ON r.id = p.root_id "
            "WHERE p.status = 'failed' ORDER BY p.mtime_ns DESC, p.id LIMIT ?", (limit,))
        return [(from_db(root), from_db(rel), err) for root, rel, err in rows]


def window_condition(start: str | None, end: str | None, mark: str = "?") -> tuple[str, list[object]]:
    """The SQL that follows "WHERE model_id = <mark>" to keep the photos taken in [start, end), and its
    parameters (`mark`: the driver's placeholder). Failed photos have no model_id, so "model_id = ?" alone
    means "embedded by this model" and the (model_id, taken_at) index answers the whole condition."""
    sql, params = " AND taken_at IS NOT NULL", []
    if start:
        sql += f" AND taken_at >= {mark}"
        params.append(start)
    if end:
        sql += f" AND taken_at < {mark}"
        params.append(end)
    return sql, params


def status_counts(rows: Iterable[tuple[str, str | None, int]], model_id: str) -> dict[str, int]:
    """Photos by status for `model_id` from (status, model_id, count) rows: a vector of another model is
    'pending' (it will be embedded again)."""
    counts = {"indexed": 0, "pending": 0, "failed": 0}
    for status, embedded_by, n in rows:
        kind = "failed" if status == "failed" else "indexed" if embedded_by == model_id else "pending"
        counts[kind] += int(n)
    return counts


def by_id(fetch: Callable[[int], list], vector: Callable[[Any], npt.NDArray[np.float32]]
          ) -> Iterator[tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]]:
    """(ids, vectors) chunks of (id, vector) rows read in id order: `fetch(last)` gives the rows after id
    `last` (none: the end), `vector` turns a row's value into an array."""
    last = 0
    while rows := fetch(last):
        yield (np.fromiter((r[0] for r in rows), dtype=np.uint64, count=len(rows)),
               np.stack([vector(r[1]) for r in rows]))
        last = int(rows[-1][0])


def _id_batches(ids: Iterable[int], size: int = 500) -> Iterator[tuple[list[int], str]]:
    """`ids` in batches under SQLite's bound-parameter limit, each with its "?,?,..." placeholders."""
    ids = list(ids)
    for start in range(0, len(ids), size):
        part = ids[start:start + size]
        yield part, ",".join("?" * len(part))


@dataclass
class Changes:
    """One transaction's worth of scan results."""

    deletes: list[int] = field(default_factory=list)
    moves: list[tuple[int, int, str, int, int]] = field(default_factory=list)  # (id, root_id, rel, size, mtime)
    writes: list[tuple[int | None, PhotoFields]] = field(default_factory=list)  # id None: a new photo
    copies: list[tuple[int | None, int, PhotoFields]] = field(default_factory=list)  # (id, source id, fields)

    def __bool__(self) -> bool:
        return bool(self.deletes or self.moves or self.writes or self.copies)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT on the writer connection, ROLLBACK on any exception."""

    def __init__(self, con: sqlite3.Connection, lock: threading.RLock) -> None:
        self.con, self.lock = con, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
