"""The SQLite store (and the PostgreSQL one, where the contract is shared), without models."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipalbum.server.settings import data_paths
from clipalbum.server.store import Changes, IndexBusyError, PhotoFields, Store, open_store


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture()
def store(tmp_path: Path, database: str | None):
    """The store contract runs on SQLite and on PostgreSQL."""
    s = open_store(data_paths(tmp_path, database))
    yield s
    s.close()


@pytest.fixture()
def sqlite_store(tmp_path: Path):
    s = Store(tmp_path / "index.sqlite3")
    yield s
    s.close()


def fields(root_id: int, rel: str, vector=None, model="m1", taken_at=None, error=None, content_hash="h"):
    return PhotoFields(root_id, rel, size=10, mtime_ns=1, content_hash=content_hash, width=4, height=3,
                       taken_at=taken_at, error=error, model_id=None if vector is None else model, vector=vector)


class TestStore:
    def test_writes_and_reads_back_photos_with_their_vectors(self, store: Store) -> None:
        rng = np.random.default_rng(0)
        vecs = unit(rng, 3)
        root = store.add_root(Path("/album"))
        assert store.add_root(Path("/album")) == root  # idempotent
        added, removed = store.apply(Changes(writes=[(None, fields(root, f"p{i}.jpg", vecs[i])) for i in range(3)]))
        assert [i for i, _ in added] == [1, 2, 3] and removed == []
        rows = store.vector_rows([1, 2, 3], "m1")
        assert [r.rel_path for r in rows] == ["p0.jpg", "p1.jpg", "p2.jpg"]
        np.testing.assert_array_equal(np.stack([r.vector for r in rows]), vecs)
        assert store.vector_checksum("m1") == (3, 6)
        assert store.counts("m1") == {"indexed": 3, "pending": 0, "failed": 0}
        assert store.counts("m2") == {"indexed": 0, "pending": 3, "failed": 0}  # another model's vectors
        record = store.photo(2, "m1")
        assert record is not None and record.rel_path == "p1.jpg" and record.status == "indexed"
        assert store.photo(2, "m2").status == "pending"
        assert store.photo(99, "m1") is None

    def test_every_change_bumps_the_generation(self, store: Store) -> None:
        root = store.add_root(Path("/album"))
        g0 = store.generation()
        store.apply(Changes(writes=[(None, fields(root, "a.jpg", unit(np.random.default_rng(1), 1)[0]))]))
        g1 = store.generation()
        store.delete([1])
        assert g0 < g1 < store.generation()

    def test_moves_keep_the_id_and_vector_and_copies_share_it(self, store: Store) -> None:
        vec = unit(np.random.default_rng(2), 1)[0]
        a, b = store.add_root(Path("/a")), store.add_root(Path("/b"))
        store.apply(Changes(writes=[(None, fields(a, "x.jpg", vec, content_hash="hx"))]))
        store.apply(Changes(moves=[(1, b, "sub/y.jpg", 11, 2)]))
        assert store.file_states(a) == {}
        state = store.file_states(b)["sub/y.jpg"]
        assert (state.id, state.size, state.mtime_ns) == (1, 11, 2)
        added, _ = store.apply(Changes(copies=[(None, 1, PhotoFields(a, "copy.jpg", 11, 3, "hx"))]))
        assert added[0][0] == 2
        np.testing.assert_array_equal(store.vector(2)[1], vec)
        assert store.embedded_by_hash("hx", "m1") == [1, 2]
        assert store.embedded_hashes("m1") == {"hx"}

    def test_a_failed_file_has_no_vector_and_is_listed(self, store: Store) -> None:
        root = store.add_root(Path("/album"))
        _, removed = store.apply(Changes(writes=[(None, fields(root, "bad.jpg", error="truncated"))]))
        assert removed == [1]  # the ANN index drops any old vector of that photo
        assert store.counts("m1")["failed"] == 1
        assert store.failures(10) == [("/album", "bad.jpg", "truncated")]
        assert store.vector(1) == (None, None)
        assert store.vector_checksum("m1") == (0, 0)

    def test_capture_time_window(self, store: Store) -> None:
        root = store.add_root(Path("/album"))
        vecs = unit(np.random.default_rng(3), 3)
        times = ["2023-05-01T10:00:00", "2024-01-01T00:00:00", None]
        store.apply(Changes(writes=[(None, fields(root, f"{i}.jpg", vecs[i], taken_at=t))
                                    for i, t in enumerate(times)]))
        assert store.ids_taken_between("m1", "2024-01-01", None) == [2]
        assert store.ids_taken_between("m1", None, "2024-01-01") == [1]
        assert sorted(store.ids_taken_between("m1", None, None)) == [1, 2]  # undated photos never match

    def test_iterates_vectors_in_chunks(self, store: Store) -> None:
        root = store.add_root(Path("/album"))
        vecs = unit(np.random.default_rng(4), 10)
        store.apply(Changes(writes=[(None, fields(root, f"{i}.jpg", vecs[i])) for i in range(10)]))
        chunks = list(store.iter_vectors("m1", chunk=4))
        assert [len(ids) for ids, _ in chunks] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([v for _, v in chunks]), vecs)

    def test_a_rolled_back_batch_leaves_nothing(self, store: Store) -> None:
        root = store.add_root(Path("/album"))
        vec = unit(np.random.default_rng(5), 1)[0]
        bad = Changes(writes=[(None, fields(root, "a.jpg", vec)), (None, fields(root, "a.jpg", vec))])
        with pytest.raises(Exception, match="(?i)unique"):
            store.apply(bad)
        assert store.file_states(root) == {}
        assert store.generation() == 0


    def test_a_version_1_database_is_migrated_in_place(self, tmp_path: Path) -> None:
        path = tmp_path / "old.sqlite3"
        con = sqlite3.connect(path)
        con.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1'), ('generation', '7');
            CREATE TABLE roots (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
            INSERT INTO roots VALUES (1, '/album');
            CREATE TABLE photos (id INTEGER PRIMARY KEY AUTOINCREMENT, root_id INTEGER NOT NULL REFERENCES roots(id),
                rel_path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, content_hash TEXT,
                width INTEGER, height INTEGER, taken_at TEXT, status TEXT NOT NULL, error TEXT, model_id TEXT,
                vector BLOB, UNIQUE (root_id, rel_path));
            INSERT INTO photos (root_id, rel_path, size, mtime_ns, status, model_id, vector)
                VALUES (1, 'a.jpg', 1, 1, 'indexed', 'm1', zeroblob(64));
        """)
        con.close()
        store = Store(path)
        try:
            assert store.get_meta("schema_version") == "3" and store.generation() == 7
            assert store.counts("m1") == {"indexed": 1, "pending": 0, "failed": 0}  # counted when migrated
            assert [len(ids) for ids, _ in store.iter_vectors("m1")] == [1]  # the old row, vector_gen 0
            assert [len(ids) for ids, _ in store.iter_vectors("m1", since=0)] == []
        finally:
            store.close()

    def test_counts_follow_every_kind_of_change(self, store: Store) -> None:
        root = store.add_root(Path("/album"))
        vecs = unit(np.random.default_rng(3), 6)
        store.apply(Changes(writes=[(None, fields(root, f"{i}.jpg", vecs[i])) for i in range(4)]
                            + [(None, fields(root, "bad.jpg", error="broken"))]))
        assert store.counts("m1") == {"indexed": 4, "pending": 0, "failed": 1}
        store.apply(Changes(writes=[(1, fields(root, "0.jpg", vecs[4], model="m2")),  # re-embedded by another model
                                    (2, fields(root, "1.jpg", error="now truncated")),  # an edit broke it
                                    (5, fields(root, "bad.jpg", vecs[5]))],  # repaired
                            deletes=[3], moves=[(4, root, "moved.jpg", 10, 2)]))
        store.apply(Changes(copies=[(None, 4, fields(root, "copy.jpg", vecs[3]))]))
        assert store.counts("m1") == {"indexed": 3, "pending": 1, "failed": 1}
        assert store.counts("m2") == {"indexed": 1, "pending": 3, "failed": 1}

    def test_vectors_written_after_a_generation_can_be_listed(self, store: Store) -> None:
        root = store.add_root(Path("/album"))
        vecs = unit(np.random.default_rng(9), 3)
        store.apply(Changes(writes=[(None, fields(root, "a.jpg", vecs[0]))]))
        since = store.generation()
        store.apply(Changes(writes=[(None, fields(root, "b.jpg", vecs[1])), (1, fields(root, "a.jpg", vecs[2]))]))
        store.apply(Changes(moves=[(2, root, "moved.jpg", 10, 5)]))  # a move keeps the vector: not listed again
        (ids, vectors), = store.iter_vectors("m1", since=since)
        assert ids.tolist() == [1, 2]
        np.testing.assert_array_equal(vectors, vecs[[2, 1]])
        assert store.embedded_ids("m1").tolist() == [1, 2]


class TestModelSwitchStaging:
    """A switch's vectors wait beside the current ones and move in one transaction (both stores)."""

    @staticmethod
    def filled(store: Store, n: int = 4) -> list:
        root = store.add_root(Path("/album"))
        store.apply(Changes(writes=[(None, fields(root, f"p{i}.jpg", unit(np.random.default_rng(i), 1)[0],
                                                  content_hash=f"h{i}")) for i in range(n)]))
        return store.to_restage("m2", 0, 100)

    def test_staged_vectors_move_in_one_step_once_every_photo_has_one(self, store: Store) -> None:
        jobs = self.filled(store)
        assert [j.id for j in jobs] == [1, 2, 3, 4] and jobs[0].original_path == Path("/album/p0.jpg")
        new = unit(np.random.default_rng(9), 4, dim=24)
        assert store.stage("m2", jobs[:3], list(new[:3]), [None] * 3) == 3
        assert store.to_restage("m2", 0, 100) == jobs[3:] and store.to_restage("m2", 3, 100) == jobs[3:]
        assert store.staging_counts("m2") == (3, 4)
        assert not store.promote_staged("m2")  # photo 4 has none yet: nothing moves
        assert store.counts("m1")["indexed"] == 4
        store.stage("m2", jobs[3:], [None], ["cannot identify image file"])  # unreadable now
        ids, vectors = zip(*store.iter_switch_vectors("m2"))
        assert np.concatenate(ids).tolist() == [1, 2, 3]
        generation = store.generation()
        assert store.promote_staged("m2") and store.generation() > generation
        assert store.counts("m2") == {"indexed": 3, "pending": 0, "failed": 1}
        np.testing.assert_allclose(np.stack([r.vector for r in store.vector_rows([1, 2, 3], "m2")]), new[:3])
        assert store.photo(4, "m2").error == "cannot identify image file"
        assert store.staging_counts("m2") == (0, 0) and store.to_restage("m2", 0, 100) == []

    def test_compact_gives_a_finished_switchs_space_back_and_keeps_every_row(self, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
        from clipalbum.server.cli import main

        data = tmp_path / "data"
        data.mkdir()
        store = Store(data / "index.sqlite3")
        self.filled(store, n=400)
        jobs = store.to_restage("m2", 0, 400)
        new = unit(np.random.default_rng(9), 400, dim=512)
        store.stage("m2", jobs, list(new), [None] * 400)
        assert store.promote_staged("m2")
        store.delete(range(1, 401, 3))  # removed photos: gaps in the ids, which compact must not close
        before = {r.id: r.vector for r in store.vector_rows(range(1, 401), "m2")}
        assert len(before) == 266
        store.close()
        grown = (data / "index.sqlite3").stat().st_size
        assert main(["db", "compact", "--data-dir", str(data)]) == 0
        assert "MB ->" in capsys.readouterr().out
        assert (data / "index.sqlite3").stat().st_size < 0.7 * grown  # the staged copy's pages are gone
        store = Store(data / "index.sqlite3")
        after = {r.id: r.vector for r in store.vector_rows(range(1, 401), "m2")}
        assert after.keys() == before.keys() and all(np.array_equal(after[i], before[i]) for i in before)
        with store.exclusive_writer():  # an indexer at work: compact waits for nobody, it says so
            with pytest.raises(IndexBusyError):
                store.compact()
        store.close()

    def test_a_photo_that_changes_or_goes_loses_its_staged_vector(self, store: Store) -> None:
        jobs = self.filled(store)
        store.stage("m2", jobs, list(unit(np.random.default_rng(9), 4, dim=24)), [None] * 4)
        store.apply(Changes(moves=[(1, 1, "renamed.jpg", 10, 1)]))  # same file, new name: kept
        store.apply(Changes(writes=[(2, fields(1, "p1.jpg", unit(np.random.default_rng(5), 1)[0],
                                               content_hash="changed"))]))  # new pixels: dropped
        store.delete([3])  # gone: dropped with it
        assert store.staging_counts("m2") == (2, 3)
        assert [j.id for j in store.to_restage("m2", 0, 100)] == [2]
        stale = jobs[1]  # as listed before the change: its vector describes old pixels
        changed = type(stale)(stale.id, stale.root, stale.rel_path, stale.size, stale.mtime_ns + 1)
        assert store.stage("m2", [changed], [unit(np.random.default_rng(6), 1, dim=24)[0]], [None]) == 0
        assert store.discard_staged(keep_model_id="m3") == 2 and store.staging_counts("m2") == (0, 3)


class TestHotQueryPlans:
    """The queries a search, a thumbnail or a status poll runs stay on the index meant for them: an index
    added for one query once moved vector_rows from the primary key to a scan of every indexed photo."""

    @pytest.fixture()
    def filled(self, sqlite_store: Store) -> Store:
        store = sqlite_store
        root = store.add_root(Path("/album"))
        vectors = unit(np.random.default_rng(1), 50)
        changes = Changes()
        changes.writes.extend((None, fields(root, f"{i}.jpg", vectors[i], taken_at=f"2020-01-{1 + i % 28:02d}T10:00:00",
                                            content_hash=f"h{i}")) for i in range(50))
        changes.writes.extend((None, fields(root, f"bad{i}.jpg", error="broken")) for i in range(5))
        store.apply(changes)
        return store

    @staticmethod
    def plans(store: Store, call) -> list[str]:
        """EXPLAIN QUERY PLAN of every statement `call` runs on this thread's reader connection."""
        statements: list[str] = []
        con = store._reader
        con.set_trace_callback(statements.append)  # the SQL with its parameters bound
        try:
            call()
        finally:
            con.set_trace_callback(None)
        return [" | ".join(row[3] for row in con.execute(f"EXPLAIN QUERY PLAN {sql}")) for sql in statements]

    def test_search_and_serving_read_photos_by_primary_key(self, filled: Store) -> None:
        ids = list(range(1, 30))
        for call in (lambda: filled.vector_rows(ids, "m1"), lambda: filled.taken_at(ids),
                     lambda: filled.photo(7, "m1"), lambda: filled.vector(7)):
            (plan,) = self.plans(filled, call)
            assert "SEARCH p USING INTEGER PRIMARY KEY" in plan or "SEARCH photos USING INTEGER PRIMARY KEY" in plan, plan

    def test_a_model_switch_walks_the_photos_by_primary_key(self, filled: Store) -> None:
        (plan,) = self.plans(filled, lambda: filled.to_restage("m2", 10, 16))
        assert plan.startswith("SEARCH p USING INTEGER PRIMARY KEY (rowid>?)"), plan
        plans = self.plans(filled, lambda: filled.staging_counts("m2"))
        assert "SEARCH staged_vectors USING COVERING INDEX staged_by_model (model_id=?)" in plans[0], plans

    def test_date_windows_and_status_use_their_indexes(self, filled: Store) -> None:
        (plan,) = self.plans(filled, lambda: filled.count_taken_between("m1", "2020-01-05", "2020-01-09"))
        assert "photos_by_model_taken" in plan, plan
        (plan,) = self.plans(filled, lambda: filled.ids_taken_between("m1", "2020-01-05", "2020-01-09"))
        assert "photos_by_model_taken" in plan, plan
        (plan,) = self.plans(filled, lambda: filled.counts("m1"))
        assert plan == "SCAN photo_counts", plan  # a few rows kept by triggers, never the photos
