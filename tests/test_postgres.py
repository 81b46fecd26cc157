"""What only the PostgreSQL store has: several servers on one database, the advisory indexing lock, file
names Postgres TEXT can't hold, `clipalbum db migrate`, and a real kill -9 mid-index (the store contract,
the scanner and the API run on both stores in their own modules)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from clipalbum.server import dbmigrate, pgstore
from clipalbum.server.cli import main
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.library import IndexBusyError, Library
from clipalbum.server.pgstore import PgStore, redacted, vector_index_name
from clipalbum.server.settings import data_paths
from clipalbum.server.store import Changes, PhotoFields
from tests import faulttools
from tests.albumtools import write_variants
from tests.conftest import REPO, SAMPLE_PHOTOS, skimage_data_dir
from tests.tinybundle import make_tiny_bundle


def add_photos(store: PgStore, folder: str, count: int, dim: int, seed: int, model: str = "m1",
               dated: bool = False) -> np.ndarray:
    """`count` photos of `model` with random unit vectors under a new root `folder`; returns the vectors."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    root = store.add_root(Path(folder))
    store.apply(Changes(writes=[(None, PhotoFields(
        root, f"{i}.jpg", 1, 1, f"{folder}{i}", model_id=model, vector=vectors[i],
        taken_at=f"2020-01-{1 + i % 28:02d}T10:00:00" if dated else None)) for i in range(count)]))
    return vectors


def photo_count(url: str) -> int:
    try:
        with psycopg.connect(url, autocommit=True) as con:
            return int(con.execute("SELECT COUNT(*) FROM photos").fetchone()[0])
    except psycopg.errors.UndefinedTable:  # the first run has not created its tables yet
        return 0


def answers(library: Library, queries: list[str]) -> list[list[tuple[int, float]]]:
    return [[(hit.id, round(hit.score, 4)) for hit in library.search_text(q, k=10).results] for q in queries]


QUERIES = ["a cat", "a rocket", "a cup of coffee", "galaxies"]


class TestSharedDatabase:
    def test_a_second_server_reads_what_the_first_indexes_at_once(self, tmp_path: Path, tiny_bundle: Path,
                                                               sample_album: Path, postgres_url: str) -> None:
        indexer = Library.open(data_paths(tmp_path / "a", postgres_url), model=tiny_bundle,
                               roots=[str(sample_album)])
        reader = Library.open(data_paths(tmp_path / "b", postgres_url), model=tiny_bundle)  # another machine
        try:
            assert reader.status().indexed == 0
            indexer.index()
            # No catch-up step: the reader keeps no index of its own, the database's answers.
            assert reader.status().indexed == len(SAMPLE_PHOTOS)
            assert answers(reader, QUERIES) == answers(indexer, QUERIES)
            assert reader.roots == [sample_album.resolve()]
            hit = reader.search_text("a cat", k=1).results[0]
            assert reader.original_path(hit.id) == (sample_album / hit.path).resolve()
        finally:
            reader.close()
            indexer.close()

    def test_one_indexer_per_album_root_and_a_clear_message_for_the_next(
            self, tmp_path: Path, tiny_bundle: Path, sample_album: Path, postgres_url: str) -> None:
        first = Library.open(data_paths(tmp_path / "a", postgres_url), model=tiny_bundle, roots=[str(sample_album)])
        second = Library.open(data_paths(tmp_path / "b", postgres_url), model=tiny_bundle)
        try:
            with first._writer():
                with pytest.raises(IndexBusyError, match=f"indexing {sample_album.resolve()}"):
                    second.index()
            assert second.index().embedded == len(SAMPLE_PHOTOS)  # the lock ended with the first's session
        finally:
            second.close()
            first.close()


class TestDatabaseRestart:
    def test_a_server_answers_503_while_its_connections_are_cut_then_recovers(
            self, tmp_path: Path, tiny_bundle: Path, sample_album: Path, postgres_url: str) -> None:
        from litestar.testing import TestClient

        from clipalbum.server.app import create_app

        library = Library.open(data_paths(tmp_path / "data", postgres_url), model=tiny_bundle,
                               roots=[str(sample_album)])
        try:
            library.index()
            with TestClient(create_app(library, background_index=False)) as client:
                for _ in range(5):
                    assert client.get("/api/search", params={"q": "a cat"}).status_code == 200
                with psycopg.connect(postgres_url, autocommit=True) as admin:  # as a database restart would
                    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                statuses = []
                while statuses[-10:] != [200] * 10 and len(statuses) < 100:
                    response = client.get("/api/search", params={"q": "a cat"})
                    statuses.append(response.status_code)
                    if response.status_code == 503:
                        assert response.json()["detail"].startswith("the database is not reachable")
                        assert response.headers["retry-after"] == "5"
            assert statuses[0] == 503 and statuses[-10:] == [200] * 10, statuses
            assert set(statuses) == {200, 503}
            for attempt in range(3):  # the writer's connection was cut too: one failed scan at most per connection
                try:
                    assert library.index().unchanged == len(SAMPLE_PHOTOS)
                    break
                except psycopg.OperationalError:
                    assert attempt < 2
        finally:
            library.close()


class TestPgStore:
    def test_keeps_file_names_that_are_not_utf8_and_errors_with_nul(self, postgres_url: str) -> None:
        store = PgStore(postgres_url)
        try:
            odd = os.fsdecode(b"caf\xe9/\xff.jpg")  # Latin-1 bytes: surrogates in Python
            root = store.add_root(Path(os.fsdecode(b"/albums/\xe9t\xe9")))
            vector = np.ones(8, dtype=np.float32) / np.sqrt(8)
            store.apply(Changes(writes=[(None, PhotoFields(root, odd, 1, 1, "h1", model_id="m", vector=vector)),
                                        (None, PhotoFields(root, "bad.jpg", 1, 1, "h2", error="bad\x00byte"))]))
            assert set(store.file_states(root)) == {odd, "bad.jpg"}  # byte-exact round trip
            assert store.roots() == [(root, Path(os.fsdecode(b"/albums/\xe9t\xe9")))]
            assert store.failures(5)[0][2] == "bad\\x00byte"
            assert store.photo(1, "m").original_path == Path(os.fsdecode(b"/albums/\xe9t\xe9/caf\xe9/\xff.jpg"))
        finally:
            store.close()

    def test_connections_of_finished_threads_are_closed(self, postgres_url: str) -> None:
        # Each thread that reads opens its own connection: a caller's short-lived thread, or a thread pool
        # that is shut down and replaced, must not leave its connection open once the thread has ended.
        def backends() -> int:
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                return int(admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                                         ).fetchone()[0])

        def settled(at_most: int) -> int:  # a closed connection's backend leaves pg_stat_activity shortly after
            deadline = time.monotonic() + 10
            while (count := backends()) > at_most and time.monotonic() < deadline:
                time.sleep(0.05)
            return count

        store = PgStore(postgres_url)
        try:
            for _ in range(12):
                reader = threading.Thread(target=store.get_meta, args=("schema_version",))
                reader.start()
                reader.join()
            store.get_meta("schema_version")  # a new connection closes those of threads that ended
            assert settled(3) <= 3  # the writer, this thread's reader, at most one more
        finally:
            store.close()
        assert settled(0) == 0

    def test_the_models_own_vector_index_finds_the_nearest(self, postgres_url: str) -> None:
        store = PgStore(postgres_url)
        try:
            vectors = add_photos(store, "/album", 500, 32, seed=0, model="m")
            index = store.vector_index("m", 32)
            ids, scores = index.search(vectors[41], 5)
            assert ids[0] == 42 and scores[0] == pytest.approx(1.0, abs=1e-3)
            assert scores == sorted(scores, reverse=True) and len(index) == 500
            assert store.vector_index("other", 32).search(vectors[41], 5) == ([], [])  # per model
        finally:
            store.close()

    def test_passwords_stay_out_of_messages(self) -> None:
        assert redacted("postgresql://me:s3cret@db.example/photos") == "postgresql://me:***@db.example/photos"
        with pytest.raises(ClipalbumError, match="cannot connect") as caught:
            PgStore("postgresql://me:s3cret@127.0.0.1:1/photos?connect_timeout=2")
        assert "s3cret" not in str(caught.value)

    def test_a_url_that_is_not_postgres_is_refused_by_the_cli(self, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["status", "--data-dir", str(tmp_path), "--database", "mysql://db/photos"]) == 2
        assert "must be a PostgreSQL URL" in capsys.readouterr().err


class _Recording:
    """A reader connection that notes each statement it runs (to EXPLAIN them afterwards)."""

    def __init__(self, con: psycopg.Connection) -> None:
        self.con, self.seen = con, []
        self.closed = self.broken = False

    def execute(self, query, params=None):
        self.seen.append((query, params))
        return self.con.execute(query, params)

    def cursor(self, **options):
        recording, cursor = self, self.con.cursor(**options)

        class Cursor:
            def execute(self, query, params=None):
                recording.seen.append((query, params))
                return cursor.execute(query, params)

        return Cursor()


class TestHotQueryPlans:
    """As for SQLite (tests/test_store.py): a search, a thumbnail or a photo page reads photos by primary key,
    and the graph search runs on the model's HNSW index. The table has no statistics yet (no ANALYZE), as
    right after a scan, which is when a planner picks worst; sequential scans are off, as a small test table
    would rightly get one: which index the planner takes is the question."""

    @staticmethod
    def plans(store: PgStore, call) -> list[str]:
        real = store._reader
        recording = store._local.con = _Recording(real)
        try:
            call()
        finally:
            store._local.con = real
        out = []
        real.execute("SET enable_seqscan = off")
        try:
            for query, params in recording.seen:
                statement = query if isinstance(query, psycopg.sql.Composable) else psycopg.sql.SQL(query)
                rows = real.execute(psycopg.sql.SQL("EXPLAIN {}").format(statement), params).fetchall()
                out.append(" | ".join(r[0] for r in rows))
        finally:
            real.execute("RESET enable_seqscan")
        return out

    @pytest.fixture()
    def filled(self, postgres_url: str):
        store = PgStore(postgres_url)
        add_photos(store, "/album", 300, 16, seed=1, dated=True)
        yield store
        store.close()

    def test_search_and_serving_read_photos_by_primary_key(self, filled: PgStore) -> None:
        ids = list(range(1, 30))
        for call in (lambda: filled.vector_rows(ids, "m1"), lambda: filled.taken_at(ids),
                     lambda: filled.photo(7, "m1"), lambda: filled.vector(7)):
            (plan,) = self.plans(filled, call)
            assert "photos_pkey" in plan and "photos_by_" not in plan, plan

    def test_a_model_switch_walks_the_photos_by_primary_key(self, filled: PgStore) -> None:
        (plan,) = self.plans(filled, lambda: filled.to_restage("m2", 10, 16))
        assert "photos_pkey" in plan and "photos_by_" not in plan, plan

    def test_the_graph_search_can_use_the_models_partial_hnsw_index(self, filled: PgStore) -> None:
        # The question is whether the index's expression and predicate match the query, so that it can
        # serve the ORDER BY ... LIMIT: sorting 300 rows is rightly cheaper, so sorts are off here.
        index = filled.vector_index("m1", 16)
        index.search(np.ones(16, dtype=np.float32) / 4, 20)  # sets this connection's hnsw.ef_search
        filled._reader.execute("SET enable_sort = off")
        try:
            (plan,) = self.plans(filled, lambda: index.search(np.ones(16, dtype=np.float32) / 4, 20))
        finally:
            filled._reader.execute("RESET enable_sort")
        assert vector_index_name("m1") in plan, plan


    def test_a_large_model_searches_ivfflat_lists_rebuilt_as_it_grows(self, filled: PgStore,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(pgstore, "IVFFLAT_MIN", 100)  # the fixture's 300 photos count as a large model
        index = filled.vector_index("m1", 16)
        assert filled.vector_index_kind("m1") == ("ivfflat", 17)  # about sqrt(300) lists
        assert index.search_width() == pgstore.IVFFLAT_MIN_PROBES  # lists probed
        target = filled.vector(7)[1]
        assert index.search(target, 5)[0][0] == 7
        filled._reader.execute("SET enable_sort = off")
        try:
            (plan,) = self.plans(filled, lambda: index.search(target, 20))
        finally:
            filled._reader.execute("RESET enable_sort")
        assert vector_index_name("m1") in plan, plan

        assert not index.maintain()  # the lists fit the photos
        add_photos(filled, "/more", 1000, 16, seed=2)
        assert index.maintain()  # grown fourfold: rebuilt with more lists, under the same name
        assert filled.vector_index_kind("m1") == ("ivfflat", 36)
        assert index.search_width() == pgstore.IVFFLAT_MIN_PROBES
        assert index.search(target, 5)[0][0] == 7
        indexes = [name for (name,) in filled._reader.execute("SELECT indexname FROM pg_indexes")]
        assert vector_index_name("m1") + "_next" not in indexes


class TestMigrate:
    def test_copies_the_index_with_its_ids_and_resumes_after_a_stop(
            self, tmp_path: Path, tiny_bundle: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        album = tmp_path / "album"
        write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 30, side=96)
        (album / "broken.jpg").write_bytes(b"not a photo")
        paths = data_paths(tmp_path / "data")
        sqlite_lib = Library.open(paths, model=tiny_bundle, roots=[str(album)])
        sqlite_lib.index()
        before = answers(sqlite_lib, QUERIES)
        sqlite_lib.close()

        monkeypatch.setattr(dbmigrate, "CHUNK", 7)

        class StopAfterTwoChunks(dbmigrate.tqdm):  # the progress bar moves after each committed chunk
            def update(self, n: float | None = 1) -> bool | None:
                if self.n >= 7:
                    raise KeyboardInterrupt  # Ctrl-C mid-copy
                return super().update(n)

        monkeypatch.setattr(dbmigrate, "tqdm", StopAfterTwoChunks)
        with pytest.raises(KeyboardInterrupt):
            dbmigrate.migrate(paths, postgres_url, progress=True)  # (a disabled bar counts nothing)
        assert photo_count(postgres_url) == 14
        monkeypatch.undo()

        summary = dbmigrate.migrate(paths, postgres_url, progress=False)
        assert (summary.photos, summary.copied) == (31, 31 - 14)
        moved = Library.open(data_paths(tmp_path / "data", postgres_url), model=tiny_bundle)
        try:
            assert answers(moved, QUERIES) == before  # same ids, same vectors, same ranking
            status = moved.status()
            assert (status.indexed, status.failed) == (30, 1)
            write_variants(skimage_data_dir(), ["horse.png"], album / "added", 1, side=120)
            assert moved.index().embedded == 1  # indexing goes on in the database
            assert moved.search_text("a horse", k=40).results[0].id > 31  # after the copied ids, not over them
        finally:
            moved.close()
        with pytest.raises(ClipalbumError, match="migrated .* already"):
            dbmigrate.migrate(paths, postgres_url, progress=False)

    def test_refuses_a_database_that_holds_other_photos(self, tmp_path: Path, tiny_bundle: Path,
                                                       sample_album: Path, postgres_url: str) -> None:
        other = Library.open(data_paths(tmp_path / "other", postgres_url), model=tiny_bundle,
                             roots=[str(sample_album)])
        other.index()
        other.close()
        paths = data_paths(tmp_path / "data")
        Library.open(paths, model=tiny_bundle, roots=[str(sample_album)]).close()
        with pytest.raises(ClipalbumError, match="already holds photos"):
            dbmigrate.migrate(paths, postgres_url, progress=False)


@pytest.mark.slow
def test_kill_9_mid_index_into_postgres_then_resume_equals_a_clean_run(tmp_path: Path, postgres_url: str) -> None:
    bundle = make_tiny_bundle(tmp_path / "tiny224", size=224)  # real decoding cost: slow enough to kill
    album = tmp_path / "album"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 200, side=256)
    command = [*faulttools.index_command(album, tmp_path / "data", bundle), "--database", postgres_url]
    proc = faulttools.start(command)
    assert faulttools.kill_when(proc, lambda: photo_count(postgres_url) >= 50), "finished before the kill"
    killed_at = photo_count(postgres_url)
    assert 0 < killed_at < 200
    summary = json.loads(faulttools.run_to_end(command))  # the killed session's advisory lock is gone
    assert summary["unchanged"] >= killed_at and summary["embedded"] <= 200 - killed_at

    clean = tmp_path / "clean"
    faulttools.run_to_end(faulttools.index_command(album, clean, bundle))
    resumed = Library.open(data_paths(tmp_path / "data", postgres_url), model=bundle)
    reference = Library.open(data_paths(clean), model=bundle)
    try:
        rows = resumed.store._reader.execute("SELECT rel_path, status, vector IS NOT NULL FROM photos").fetchall()
        assert len(rows) == len({r[0] for r in rows}) == 200 and all(r[1] == "indexed" and r[2] for r in rows)
        for rel, state in reference.store.file_states(1).items():
            mine = resumed.store.file_states(1)[rel]
            np.testing.assert_allclose(resumed.store.vector(mine.id)[1], reference.store.vector(state.id)[1],
                                       atol=1e-5, err_msg=rel)
        assert [h.score for h in resumed.search_text("a cat", k=5).results] == pytest.approx(
            [h.score for h in reference.search_text("a cat", k=5).results], abs=1e-4)
    finally:
        resumed.close()
        reference.close()


def test_the_base_install_explains_the_missing_extra(tmp_path: Path) -> None:
    """Without psycopg (the Pi's base install) a database URL gets the install command, not a traceback."""
    probe = ("import sys\nsys.modules['psycopg'] = None\n"  # an import of it now fails as if not installed
             "from clipalbum.server.cli import main\n"
             f"sys.exit(main(['status', '--data-dir', {str(tmp_path)!r}, '--database', 'postgresql://db/photos']))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and 'pip install "clipalbum[postgres]"' in done.stderr, done.stderr
