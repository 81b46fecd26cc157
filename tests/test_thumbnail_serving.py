"""Thumbnails over the API when the cache cannot be written, and while thumbnail decodes wait for memory."""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from litestar.testing import TestClient
from PIL import Image

from clipalbum.server.app import create_app
from clipalbum.server.decode_budget import DECODE_BUDGET
from clipalbum.server.library import Library
from clipalbum.server.thumbnails import THUMBNAIL_DECODES, THUMBNAIL_SIZES
from tests.conftest import eventually
from tests.test_api import _id_of, make_album, make_web_dir, open_indexed

# asyncio's default executor, on which Litestar runs the API's sync handlers (text search among them).
API_WORKER_THREADS = min(32, (os.cpu_count() or 1) + 4)


@pytest.fixture()
def library(tmp_path: Path, tiny_bundle: Path) -> Iterator[Library]:
    lib = open_indexed(tmp_path / "data", tiny_bundle, make_album(tmp_path / "album"))
    yield lib
    lib.close()


@pytest.fixture()
def client(library: Library, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(library, web_dir=make_web_dir(tmp_path / "web"), background_index=False)
    with TestClient(app) as test_client:
        yield test_client



@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_serves_thumbnails_without_caching_them(
        client: TestClient, library: Library, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        code: int) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("clipalbum.server.thumbnails.tempfile.mkstemp", refuse)
    coffee = _id_of(client, "coffee.png")
    with caplog.at_level("WARNING", logger="clipalbum.server.thumbnails"):
        response = client.get(f"/api/images/{coffee}/thumbnail", params={"size": 128})
        again = client.get(f"/api/images/{coffee}/thumbnail", params={"size": 256})
    assert response.status_code == 200 and again.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert "max-age" in response.headers["cache-control"] and response.headers["etag"].startswith('"t')
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.format == "JPEG" and max(img.size) == 128
    assert not list(library.paths.thumbnails.rglob("*.jpg"))
    assert [r.levelname for r in caplog.records if r.name == "clipalbum.server.thumbnails"] == ["WARNING"]  # once
    revalidated = client.get(f"/api/images/{coffee}/thumbnail", params={"size": 128},
                             headers={"If-None-Match": response.headers["etag"]})
    assert revalidated.status_code == 304


def test_text_search_is_answered_while_thumbnails_wait_for_decode_memory(
        client: TestClient, library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [_id_of(client, name) for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]
    # As many uncached thumbnails as the API has worker threads: without a pool of their own they take all.
    urls = [f"/api/images/{ids[i % len(ids)]}/thumbnail?size={THUMBNAIL_SIZES[i // len(ids) % len(THUMBNAIL_SIZES)]}"
            for i in range(API_WORKER_THREADS)]
    looked_up: list[int] = []
    real_photo = library.photo
    monkeypatch.setattr(library, "photo", lambda photo_id: looked_up.append(photo_id) or real_photo(photo_id))
    with ThreadPoolExecutor(API_WORKER_THREADS + 1) as requests:
        with DECODE_BUDGET.reserve(DECODE_BUDGET.capacity):  # as if big photos were being decoded
            thumbnails = [requests.submit(client.get, url) for url in urls]
            # Every request is in its handler, and the decodes that got that far wait for memory.
            assert eventually(lambda: len(looked_up) == len(urls)
                       and DECODE_BUDGET.waiting == min(len(urls), THUMBNAIL_DECODES), seconds=30)
            search = requests.submit(client.get, "/api/search", params={"q": "a cat", "k": 3})
            # (a generous bound, not a timing: without the fix the search waits until the budget is freed)
            answer = search.result(timeout=60)
            assert answer.status_code == 200 and answer.json()["results"]
            assert not any(thumbnail.done() for thumbnail in thumbnails)
        assert [thumbnail.result(timeout=60).status_code for thumbnail in thumbnails] == [200] * len(urls)


def test_thumbnails_are_made_on_threads_of_their_own_at_normal_priority(
        client: TestClient, library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = client.app.state.thumbnails
    real_get = cache.get
    makers: list[tuple[str, int]] = []

    def recording_get(*args, **kwargs):  # type: ignore[no-untyped-def]
        makers.append((threading.current_thread().name,
                       os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real_get(*args, **kwargs)

    monkeypatch.setattr(cache, "get", recording_get)
    url = f"/api/images/{_id_of(client, 'rocket.jpg')}/thumbnail"
    assert client.get(url).status_code == 200 and client.get(url).status_code == 200
    ((name, nice),) = makers  # the second was served from the cache, without a thumbnail thread
    assert name.startswith("thumbnail") and nice == os.getpriority(os.PRIO_PROCESS, 0)
