"""Paths from the album: symlinks and hard links, containment when scanning and serving, file names that are
not UTF-8, and walk problems (loops, over-long paths) listed in the status. Tiny bundle, real files."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec
import pytest
import uvicorn
from litestar.testing import TestClient
from PIL import Image

from clipalbum.server.app import create_app
from clipalbum.server.errors import NotFoundError
from clipalbum.server.library import Library
from clipalbum.server.scanner import AlbumWalk, walk_album
from clipalbum.server.settings import data_paths
from tests.albumtools import jpeg_bytes
from tests.conftest import eventually, skimage_data_dir
from tests.test_server_loopback import free_port

SECRET = b"root:x:0:0:secret outside the album\n"


def photo(i: int) -> bytes:
    """A distinct small JPEG per i (different crops), so no two share a content hash."""
    img = Image.open(skimage_data_dir() / "chelsea.png").convert("RGB")
    return jpeg_bytes(img.crop((i * 7, i * 5, i * 7 + 120, i * 5 + 90)))


def rows(lib: Library) -> dict[str, int]:
    """rel_path (as Python names it: surrogate-escaped when not UTF-8) -> id, through the store's reads."""
    return {lib.store.photo(i, lib.model_id).rel_path: i
            for (i,) in lib.store._reader.execute("SELECT id FROM photos").fetchall()}


def problems(lib: Library) -> dict[str, str]:
    """Status errors by the file name at the end of their path."""
    return {Path(f.path).name: f.error for f in lib.status(max_errors=1000).errors}


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.jpg").write_bytes(SECRET)
    (folder / "photo.jpg").write_bytes(photo(1))
    return folder


@pytest.fixture()
def album(tmp_path: Path) -> Path:
    folder = tmp_path / "album"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(photo(2))
    return folder


@contextmanager
def opened(tmp_path: Path, bundle: Path, album: Path, **options) -> Iterator[Library]:
    lib = Library.open(data_paths(tmp_path / "data"), model=bundle, roots=[str(album)], **options)
    try:
        yield lib
    finally:
        lib.close()


@contextmanager
def client_for(lib: Library) -> Iterator[TestClient]:
    with TestClient(create_app(lib, web_dir=lib.paths.root / "no-web", background_index=False)) as client:
        yield client


class TestSymlinksWhenScanning:
    def test_links_to_files_and_folders_outside_are_not_followed_and_are_listed(
            self, tmp_path: Path, tiny_bundle: Path, album: Path, outside: Path) -> None:
        (album / "passwd.jpg").symlink_to(outside / "secret.jpg")
        (album / "etc.jpg").symlink_to("/etc/passwd")
        (album / "elsewhere.jpg").symlink_to(outside / "photo.jpg")
        (album / "linked-folder").symlink_to(outside, target_is_directory=True)
        with opened(tmp_path, tiny_bundle, album) as lib:
            summary = lib.index()
            assert (summary.scanned, summary.added, summary.failed) == (1, 1, 0)
            assert set(rows(lib)) == {"a.jpg"}
            listed = problems(lib)
            for name in ("passwd.jpg", "etc.jpg", "elsewhere.jpg", "linked-folder"):
                assert "outside the album" in listed[name], listed

    def test_links_inside_the_album_are_followed_and_a_photo_is_indexed_once(
            self, tmp_path: Path, tiny_bundle: Path, album: Path) -> None:
        (album / "real").mkdir()
        (album / "real" / "b.jpg").write_bytes(photo(3))
        (album / "0-link-to-b.jpg").symlink_to(album / "real" / "b.jpg")  # sorts before its target
        (album / "0-link-to-real").symlink_to(album / "real", target_is_directory=True)
        os.link(album / "a.jpg", album / "hard-a.jpg")
        (album / "lonely").mkdir()
        (album / "lonely" / "c.jpg").write_bytes(photo(4))
        (album / "z-link-to-lonely-c.jpg").symlink_to(album / "lonely" / "c.jpg")
        with opened(tmp_path, tiny_bundle, album) as lib:
            summary = lib.index()
            # Each photo once, by its real (not linked) path; the first of two hard links in walk order.
            assert set(rows(lib)) == {"a.jpg", "real/b.jpg", "lonely/c.jpg"}
            assert (summary.scanned, summary.added) == (3, 3)
            assert lib.index().scanned == 3  # the same choice every scan

    def test_a_link_is_indexed_by_its_own_path_when_its_target_is_hidden_or_not_a_photo_name(
            self, tmp_path: Path, tiny_bundle: Path, album: Path) -> None:
        (album / ".private").mkdir()
        (album / ".private" / "d.jpg").write_bytes(photo(5))
        (album / "shown.jpg").symlink_to(album / ".private" / "d.jpg")
        (album / "photo.data").write_bytes(photo(6))  # not a photo name: only its link is
        (album / "named.jpg").symlink_to(album / "photo.data")
        with opened(tmp_path, tiny_bundle, album) as lib:
            lib.index()
            assert set(rows(lib)) == {"a.jpg", "shown.jpg", "named.jpg"}

    def test_the_option_follows_links_outside_and_serves_them(
            self, tmp_path: Path, tiny_bundle: Path, album: Path, outside: Path) -> None:
        (album / "elsewhere.jpg").symlink_to(outside / "photo.jpg")
        (album / "linked-folder").symlink_to(outside, target_is_directory=True)
        with opened(tmp_path, tiny_bundle, album, follow_links_outside=True) as lib:
            lib.index()
            found = rows(lib)
            # outside/photo.jpg is reached twice (a file link and through the folder link): indexed once.
            assert set(found) == {"a.jpg", "elsewhere.jpg", "linked-folder/secret.jpg"}
            with client_for(lib) as client:
                response = client.get(f"/api/images/{found['elsewhere.jpg']}/file")
                assert response.status_code == 200 and response.content == photo(1)
                # Still never a failed record, whatever the option.
                assert client.get(f"/api/images/{found['linked-folder/secret.jpg']}/file").status_code == 404
        with opened(tmp_path, tiny_bundle, album) as lib:  # the option is remembered by the data directory
            assert lib.follow_links_outside
        with opened(tmp_path, tiny_bundle, album, follow_links_outside=False) as lib:
            lib.index()
            assert set(rows(lib)) == {"a.jpg"}

    def test_loops_broken_links_and_over_long_paths_are_listed_in_the_status(
            self, tmp_path: Path, tiny_bundle: Path, album: Path) -> None:
        (album / "loop.jpg").symlink_to("loop.jpg")
        (album / "ping").symlink_to("pong")
        (album / "pong").symlink_to("ping")
        (album / "gone.jpg").symlink_to(album / "nowhere.jpg")
        (album / "notes.txt").symlink_to(album / "nowhere.txt")  # not a photo name: not worth listing
        deep = _make_over_long_folder(album / "deep")
        with opened(tmp_path, tiny_bundle, album) as lib:
            summary = lib.index()
            assert summary.added == 1
            listed = problems(lib)
            assert "Too many levels of symbolic links" in listed["loop.jpg"]
            assert "Too many levels of symbolic links" in listed["ping"]
            assert "does not exist" in listed["gone.jpg"]
            assert "notes.txt" not in listed
            assert any("File name too long" in error for error in listed.values()), listed
            body = msgspec.json.encode(lib.status())  # the status stays valid JSON
            assert b"File name too long" in body
            # Fixed problems leave the status at the next scan.
            (album / "loop.jpg").unlink()
            lib.index()
            assert "loop.jpg" not in problems(lib)
        assert deep.is_dir()

    def test_a_rescan_with_nothing_changed_writes_nothing(self, tmp_path: Path, tiny_bundle: Path, album: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """On a full or read-only data directory a periodic rescan that finds nothing new must still work:
        the walk problems are written only when they changed."""
        (album / "loop.jpg").symlink_to("loop.jpg")
        with opened(tmp_path, tiny_bundle, album) as lib:
            lib.index()
            transactions = []
            monkeypatch.setattr(lib.store, "_transaction", lambda: transactions.append(1) or 1 / 0)
            summary = lib.index()
            assert (summary.unchanged, transactions) == (1, [])
            assert "loop.jpg" in problems(lib)
            monkeypatch.undo()
            (album / "loop.jpg").unlink()  # the problems changed: written
            lib.index()
            assert "loop.jpg" not in problems(lib)

    def test_a_missing_album_folder_is_listed(self, tmp_path: Path, tiny_bundle: Path, album: Path) -> None:
        with opened(tmp_path, tiny_bundle, album) as lib:
            lib.index()
            album.rename(tmp_path / "unplugged")
            lib.index()
            assert "not there" in problems(lib)["album"]
            assert lib.status().indexed == 1  # its photos stay

    def test_walk_album_alone_keeps_links_inside_its_folder(self, album: Path, outside: Path) -> None:
        (album / "elsewhere.jpg").symlink_to(outside / "photo.jpg")
        (album / "b.jpg").symlink_to(album / "a.jpg")
        assert [f.rel_path for f in walk_album(album)] == ["a.jpg"]



def rows_by_album(lib: Library) -> set[tuple[str, str]]:
    """(album folder name, rel_path) of every row."""
    records = [lib.store.photo(i, lib.model_id) for (i,) in lib.store._reader.execute("SELECT id FROM photos")]
    return {(Path(r.root).name, r.rel_path) for r in records}


class TestLinksBetweenAlbums:
    """A link from one album folder into another: the photo is found by its real path whatever the order of
    the albums, and unplugging the linked-to album keeps what the link led to (like the album's own rows)."""

    @pytest.fixture()
    def albums(self, tmp_path: Path) -> tuple[Path, Path]:
        a, b = tmp_path / "A", tmp_path / "B"
        (b / "sub").mkdir(parents=True)
        (b / "sub" / "p.jpg").write_bytes(photo(10))
        (b / ".hidden").mkdir()
        (b / ".hidden" / "h.jpg").write_bytes(photo(11))
        a.mkdir()
        (a / "own.jpg").write_bytes(photo(12))
        (a / "l.jpg").symlink_to(b / "sub" / "p.jpg")
        (a / "folder").symlink_to(b / "sub", target_is_directory=True)
        (a / "secret").symlink_to(b / ".hidden", target_is_directory=True)  # reachable only by the link
        return a, b

    @pytest.mark.parametrize("order", ["AB", "BA"])
    def test_a_photo_is_found_under_its_real_path_whatever_the_album_order(
            self, tmp_path: Path, tiny_bundle: Path, albums: tuple[Path, Path], order: str) -> None:
        a, b = albums
        roots = [str(a), str(b)] if order == "AB" else [str(b), str(a)]
        lib = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=roots)
        try:
            summary = lib.index()
            assert rows_by_album(lib) == {("A", "own.jpg"), ("B", "sub/p.jpg"), ("A", "secret/h.jpg")}
            assert (summary.scanned, summary.added) == (3, 3)
        finally:
            lib.close()

    def test_unplugging_the_album_a_link_leads_into_keeps_its_photos(
            self, tmp_path: Path, tiny_bundle: Path, albums: tuple[Path, Path]) -> None:
        a, b = albums
        lib = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=[str(a), str(b)])
        try:
            lib.index()
            before = rows_by_album(lib)
            b.rename(tmp_path / "unplugged")
            summary = lib.index()
            assert summary.removed == 0
            assert rows_by_album(lib) == before  # B's own rows and A's secret/h.jpg, reached through B
            listed = problems(lib)
            assert "not there" in listed["B"] and "not there" in listed["secret"], listed
            (tmp_path / "unplugged").rename(b)
            (a / "secret").unlink()  # a link that is gone (not unplugged) lets go of what it led to
            assert lib.index().removed == 1
            assert ("A", "secret/h.jpg") not in rows_by_album(lib)
        finally:
            lib.close()

    def test_a_link_whose_target_fails_to_read_keeps_what_it_led_to(
            self, tmp_path: Path, tiny_bundle: Path, albums: tuple[Path, Path],
            monkeypatch: pytest.MonkeyPatch) -> None:
        # A drive yanked while still mounted answers EIO, not "no such file": not a reason to forget its photos.
        a, b = albums
        lib = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=[str(a), str(b)])
        try:
            lib.index()
            before = rows_by_album(lib)
            realpath = os.path.realpath

            def failing(path: str, *args: object, **kwargs: object) -> str:
                if kwargs.get("strict") and str(path).endswith("secret"):
                    raise OSError(errno.EIO, os.strerror(errno.EIO), path)
                return realpath(path, *args, **kwargs)

            monkeypatch.setattr(os.path, "realpath", failing)
            assert lib.index().removed == 0
            assert rows_by_album(lib) == before
            assert "stays indexed" in problems(lib)["secret"]
        finally:
            lib.close()

    def test_an_album_unplugged_during_the_walk_keeps_what_links_led_into_it(
            self, tmp_path: Path, albums: tuple[Path, Path]) -> None:
        a, b = albums
        walk = AlbumWalk([a, b])
        found = []
        for root_id, f in walk.files([(1, a), (2, b)]):
            found.append((root_id, f.rel_path))
            if f.rel_path == "own.jpg":
                b.rename(tmp_path / "unplugged")  # before B is walked and A's links followed
        assert found == [(1, "own.jpg")]
        assert walk.kept(1, "secret/h.jpg") and walk.kept(1, "folder/p.jpg") and walk.kept(1, "l.jpg")
        assert not walk.kept(1, "own.jpg") and not walk.kept(2, "sub/p.jpg")


def _make_over_long_folder(top: Path) -> Path:
    """Nested folders whose full path is longer than PATH_MAX (made relative to a folder fd), a photo inside."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(40):  # 40 x 200 chars > 4096
            os.mkdir("d" * 200, dir_fd=fd)
            next_fd = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        with open(os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(photo(9))
    finally:
        os.close(fd)
    return top


class TestServingContainment:
    def test_a_failed_record_is_never_served(self, tmp_path: Path, tiny_bundle: Path, album: Path) -> None:
        (album / "passwd.jpg").write_bytes(SECRET)  # a real file, but not a photo: a failed record
        with opened(tmp_path, tiny_bundle, album) as lib:
            lib.index()
            failed = rows(lib)["passwd.jpg"]
            with client_for(lib) as client:
                for url in (f"/api/images/{failed}/file", f"/api/images/{failed}/thumbnail"):
                    response = client.get(url)
                    assert response.status_code == 404 and SECRET not in response.content, url
                assert client.get(f"/api/images/{failed}").json()["status"] == "failed"  # metadata is fine

    def test_a_photo_replaced_by_a_link_outside_after_indexing_is_not_served(
            self, tmp_path: Path, tiny_bundle: Path, album: Path, outside: Path) -> None:
        (album / "b.jpg").write_bytes(photo(3))
        (album / "sub").mkdir()
        (album / "sub" / "c.jpg").write_bytes(photo(4))
        with opened(tmp_path, tiny_bundle, album) as lib:
            lib.index()
            found = rows(lib)
            (album / "a.jpg").unlink()
            (album / "a.jpg").symlink_to(outside / "secret.jpg")  # a file swapped for a link
            (album / "b.jpg").unlink()
            (album / "b.jpg").symlink_to(outside / "photo.jpg")  # a real photo, but outside
            (album / "sub" / "c.jpg").rename(outside / "c.jpg")
            (album / "sub").rmdir()
            (album / "sub").symlink_to(outside, target_is_directory=True)  # a folder swapped for a link
            with client_for(lib) as client:
                for name in ("a.jpg", "b.jpg", "sub/c.jpg"):
                    for url in (f"/api/images/{found[name]}/file", f"/api/images/{found[name]}/thumbnail"):
                        response = client.get(url)
                        assert response.status_code == 404, (url, response.status_code)
                        assert SECRET not in response.content

    def test_turning_off_links_outside_reaches_a_running_server(
            self, tmp_path: Path, tiny_bundle: Path, album: Path, outside: Path) -> None:
        (album / "elsewhere.jpg").symlink_to(outside / "photo.jpg")
        with opened(tmp_path, tiny_bundle, album, follow_links_outside=True) as lib:
            lib.index()
            url = f"/api/images/{rows(lib)['elsewhere.jpg']}/file"
            with client_for(lib) as client:
                assert client.get(url).status_code == 200
                # `clipalbum index --no-follow-links-outside` in another process, while the server runs:
                Library.open(lib.paths, model=tiny_bundle, follow_links_outside=False).close()
                assert eventually(lambda: client.get(url).status_code == 404)
                assert not lib.follow_links_outside

    def test_serving_checks_the_original_each_time_but_not_the_album_roots(
            self, tmp_path: Path, tiny_bundle: Path, album: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with opened(tmp_path, tiny_bundle, album) as lib:
            lib.index()
            record = lib.photo(rows(lib)["a.jpg"])
            expected = (album / "a.jpg").resolve()
            root_reads: list[int] = []
            store_roots = lib.store.roots
            monkeypatch.setattr(lib.store, "roots", lambda: root_reads.append(1) or store_roots())
            resolved: list[str] = []
            realpath = os.path.realpath
            monkeypatch.setattr(os.path, "realpath", lambda p, **kw: resolved.append(p) or realpath(p, **kw))
            for _ in range(3):
                assert lib.servable(record) == expected
            assert root_reads == [] and resolved == [record.original_path] * 3  # the original's, every time
            monkeypatch.undo()
            # A root added here is served at once; one added by another process after its follow step.
            for name, i in (("second", 5), ("third", 6)):
                (tmp_path / name).mkdir()
                (tmp_path / name / f"{name}.jpg").write_bytes(photo(i))
            lib.add_root(tmp_path / "second")
            lib.index()
            assert lib.servable(lib.photo(rows(lib)["second.jpg"])).name == "second.jpg"
            other = Library.open(lib.paths, model=tiny_bundle, roots=[str(tmp_path / "third")])
            try:
                other.index()
            finally:
                other.close()
            lib.follow_other_writers()
            assert lib.servable(lib.photo(rows(lib)["third.jpg"])).name == "third.jpg"

    def test_servable_path_is_the_real_path_inside_a_root(self, tmp_path: Path, tiny_bundle: Path,
                                                          album: Path, outside: Path) -> None:
        from clipalbum.server.containment import real_folders, servable_path

        (album / "link.jpg").symlink_to(album / "a.jpg")
        with opened(tmp_path, tiny_bundle, album) as lib:
            lib.index()
            record = lib.photo(rows(lib)["a.jpg"])
            assert servable_path(record, real_folders([album])) == (album / "a.jpg").resolve()
            linked = msgspec.structs.replace(record, rel_path="link.jpg")
            assert servable_path(linked, real_folders([album])) == (album / "a.jpg").resolve()
            sneaky = msgspec.structs.replace(record, rel_path="../outside/photo.jpg")
            with pytest.raises(NotFoundError):
                servable_path(sneaky, real_folders([album]))
            assert servable_path(sneaky, real_folders([album]), allow_outside=True) == (outside / "photo.jpg").resolve()
            # A sibling folder whose name starts like the album's is not inside it (no string prefix test).
            sibling = tmp_path / "album-2"
            sibling.mkdir()
            (sibling / "x.jpg").write_bytes(photo(6))
            with pytest.raises(NotFoundError):
                servable_path(msgspec.structs.replace(record, rel_path="../album-2/x.jpg"), real_folders([album]))
            with pytest.raises(NotFoundError, match="not a regular file"):
                servable_path(msgspec.structs.replace(record, rel_path="."), real_folders([album]))


# A valid UTF-8 non-ASCII name, the same name in Latin-1 (not UTF-8), and an ASCII name spelling the escape
# of that byte: three different files that must stay three different photos.
NAMES = {b"caf\xc3\xa9.jpg": 10, b"caf\xe9.jpg": 11, b"caf\\xe9.jpg": 12}


class TestNamesThatAreNotUtf8:
    @pytest.fixture()
    def named_album(self, album: Path) -> Path:
        for name, i in NAMES.items():
            (album / os.fsdecode(name)).write_bytes(photo(i))
        folder = album / os.fsdecode(b"dossier-\xff")
        folder.mkdir()
        (folder / os.fsdecode(b"\xfe.png")).write_bytes(photo(13))
        (album / "zz-after.jpg").write_bytes(photo(14))  # after the odd names in walk order
        return album

    def test_they_are_indexed_searched_served_and_shown(self, tmp_path: Path, tiny_bundle: Path,
                                                        named_album: Path) -> None:
        with opened(tmp_path, tiny_bundle, named_album) as lib:
            summary = lib.index()
            assert (summary.added, summary.failed) == (len(NAMES) + 3, 0)
            found = rows(lib)
            for name in NAMES:
                assert os.fsdecode(name) in found
            hits = lib.search_text("a cat", k=50).results
            assert len(hits) == len(NAMES) + 3
            shown = {h.path for h in hits}
            assert {"café.jpg", "caf\ufffd.jpg", "caf\\xe9.jpg", "dossier-\ufffd/\ufffd.png"} <= shown
            msgspec.json.encode(lib.status())
            with client_for(lib) as client:
                for name, i in NAMES.items():
                    photo_id = found[os.fsdecode(name)]
                    response = client.get(f"/api/images/{photo_id}/file")
                    assert response.status_code == 200 and response.content == photo(i)
                    assert client.get(f"/api/images/{photo_id}/thumbnail").status_code == 200
                    info = client.get(f"/api/images/{photo_id}")
                    assert info.status_code == 200 and info.json()["name"] == os.fsdecode(name).encode(
                        "utf-8", "surrogateescape").decode("utf-8", "replace")
                assert client.get("/api/search", params={"q": "cat", "k": 50}).status_code == 200
                assert client.get("/api/status").status_code == 200

    def test_a_renamed_file_with_such_a_name_is_recognised_as_moved(
            self, tmp_path: Path, tiny_bundle: Path, named_album: Path) -> None:
        with opened(tmp_path, tiny_bundle, named_album) as lib:
            lib.index()
            before = rows(lib)[os.fsdecode(b"caf\xe9.jpg")]
            os.rename(named_album / os.fsdecode(b"caf\xe9.jpg"), named_album / os.fsdecode(b"moved-\xe9.jpg"))
            summary = lib.index()
            assert (summary.moved, summary.unchanged, summary.added) == (1, len(NAMES) + 2, 0)
            assert rows(lib)[os.fsdecode(b"moved-\xe9.jpg")] == before

    def test_a_broken_file_with_such_a_name_is_listed(self, tmp_path: Path, tiny_bundle: Path,
                                                      named_album: Path) -> None:
        (named_album / os.fsdecode(b"bad-\xe9.jpg")).write_bytes(b"not a photo")
        with opened(tmp_path, tiny_bundle, named_album) as lib:
            assert lib.index().failed == 1
            assert "bad-\ufffd.jpg" in problems(lib)
            msgspec.json.encode(lib.status())

    def test_an_album_folder_with_such_a_name(self, tmp_path: Path, tiny_bundle: Path) -> None:
        odd = tmp_path / os.fsdecode(b"album-\xe9")
        odd.mkdir()
        (odd / "a.jpg").write_bytes(photo(2))
        with opened(tmp_path, tiny_bundle, odd) as lib:
            lib.index()
            assert lib.roots == [odd.resolve()]
            status = lib.status()
            assert status.roots == [str(tmp_path.resolve() / "album-\ufffd")]
            with client_for(lib) as client:
                assert client.get(f"/api/images/{rows(lib)['a.jpg']}/file").content == photo(2)


@contextmanager
def uvicorn_serving(lib: Library) -> Iterator[httpx.Client]:
    """The app under a real uvicorn on a free loopback port, in a thread."""
    port = free_port()
    app = create_app(lib, web_dir=lib.paths.root / "no-web", background_index=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


class TestOverHttp:
    def test_no_link_or_failed_record_leaks_a_file_outside_the_album(
            self, tmp_path: Path, tiny_bundle: Path, album: Path, outside: Path) -> None:
        (album / "passwd.jpg").symlink_to(outside / "secret.jpg")
        (album / "etc").symlink_to("/etc", target_is_directory=True)
        (album / "b.jpg").write_bytes(photo(3))
        (album / "broken.jpg").write_bytes(SECRET)
        with opened(tmp_path, tiny_bundle, album) as lib:
            lib.index()
            (album / "b.jpg").unlink()
            (album / "b.jpg").symlink_to(outside / "secret.jpg")
            last = max(rows(lib).values())
            with uvicorn_serving(lib) as client:
                served = {}
                for photo_id in range(1, last + 3):
                    for url in (f"/api/images/{photo_id}/file", f"/api/images/{photo_id}/thumbnail"):
                        response = client.get(url)
                        assert SECRET not in response.content and b"root:" not in response.content, url
                        served[url] = response.status_code
                assert served[f"/api/images/{rows(lib)['a.jpg']}/file"] == 200
                assert sum(code == 200 for code in served.values()) == 2  # a.jpg's file and thumbnail only
                assert client.get("/api/status").status_code == 200


class TestCommandLine:
    def test_index_status_and_search_with_links_outside_and_odd_names(
            self, tmp_path: Path, tiny_bundle: Path, album: Path, outside: Path,
            capsys: pytest.CaptureFixture) -> None:
        from clipalbum.server.cli import main

        def cli(*args: str) -> str:
            assert main([*args, "--data-dir", str(tmp_path / "data"), "--model", str(tiny_bundle)]) == 0
            return capsys.readouterr().out

        (album / "elsewhere.jpg").symlink_to(outside / "photo.jpg")
        (album / os.fsdecode(b"caf\xe9.jpg")).write_bytes(photo(11))
        (album / "red\x1b[31m\nline.jpg").write_bytes(photo(12))  # a name that would drive the terminal
        assert "3 added" in cli("index", str(album), "-q")
        status = cli("status")
        assert "elsewhere.jpg" in status and "--follow-links-outside" in status
        assert "scanned 4 photos in" in (out := cli("index", "-q", "--follow-links-outside")) and "1 added" in out
        assert "unchanged" in cli("index", "-q")  # remembered: nothing removed
        assert json.loads(cli("status", "--json"))["indexed"] == 4
        found = cli("search", "a cat", "--k", "5")
        assert "caf\ufffd.jpg" in found and "red\\x1b[31m\\nline.jpg" in found and "\x1b" not in found
        assert "caf\ufffd.jpg" in json.dumps(json.loads(cli("search", "a cat", "--k", "5", "--json")),
                                              ensure_ascii=False)
        assert "1 removed" in cli("index", "-q", "--no-follow-links-outside")


def test_the_web_client_keeps_a_backslash_in_a_file_name(tmp_path: Path) -> None:
    """web/format.js splits the server's paths at "/" only: on POSIX a backslash belongs to the name."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node to import the web client's ES module")
    format_js = (Path(__file__).resolve().parents[1] / "web" / "format.js").as_uri()
    script = (f'import {{ fileName, folderOf }} from "{format_js}";\n'
              'console.log(JSON.stringify([fileName("2024/caf\\\\xe9.jpg"),\n'
              '  folderOf({ path: "a\\\\b/c.jpg", root: "/photos" })]));\n')
    (tmp_path / "check.mjs").write_text(script)
    out = subprocess.run([node, str(tmp_path / "check.mjs")], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["caf\\xe9.jpg", "/photos/a\\b"]
