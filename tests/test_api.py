"""The JSON API through Litestar's TestClient: a real Library (tiny ONNX bundle) over real photos."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image

from clipalbum.server.app import create_app
from clipalbum.server.library import MAX_K, MAX_QUERY_CHARS, MAX_UPLOAD_BYTES, Library
from clipalbum.server.settings import data_paths
from tests.albumtools import jpeg_bytes, snapshot
from tests.conftest import SAMPLE_PHOTOS, copy_sample_photos, skimage_data_dir

WEB_INDEX = "<!doctype html><title>clipalbum test page</title>"


def make_album(folder: Path) -> Path:
    """The sample photos in nested folders, plus two dated JPEGs and one broken file."""
    source = skimage_data_dir()
    copy_sample_photos(folder)
    dated = folder / "dated"
    dated.mkdir()
    cat = Image.open(source / "chelsea.png").convert("RGB")
    (dated / "cat-2019.jpg").write_bytes(jpeg_bytes(cat.crop((0, 0, 300, 300)), taken_at="2019:07:01 12:00:00"))
    coffee = Image.open(source / "coffee.png").convert("RGB")
    (dated / "coffee-2022.jpg").write_bytes(jpeg_bytes(coffee, taken_at="2022:01:15 08:30:00"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def open_indexed(data_dir: Path, bundle: Path, album: Path, database: str | None = None) -> Library:
    library = Library.open(data_paths(data_dir, database), model=bundle, roots=[str(album)])
    library.index()
    return library


def make_web_dir(folder: Path) -> Path:
    folder.mkdir()
    (folder / "index.html").write_text(WEB_INDEX)
    (folder / "app.js").write_text("export const answer = 42;\n")
    return folder


# Read-only tests share one indexed album per module (indexing it per test would cost ~0.5 s each);
# tests that change the album or the index get their own (the own_* fixtures).
@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_album(tmp_path_factory.mktemp("shared") / "album")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path, album: Path,
            module_database: str | None) -> Iterator[Library]:
    """The API answers the same on both stores: this module runs on SQLite, then on PostgreSQL."""
    lib = open_indexed(tmp_path_factory.mktemp("shared-data"), tiny_bundle, album, module_database)
    yield lib
    lib.close()


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_web_dir(tmp_path_factory.mktemp("shared-web") / "web")


@pytest.fixture(scope="module")
def app(library: Library, web_dir: Path) -> Litestar:
    return create_app(library, web_dir=web_dir, background_index=False)


@pytest.fixture(scope="module")
def client(app: Litestar) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture()
def own_album(tmp_path: Path) -> Path:
    return make_album(tmp_path / "album")


@pytest.fixture()
def own_library(tmp_path: Path, tiny_bundle: Path, own_album: Path, module_database: str | None,
                request: pytest.FixtureRequest) -> Iterator[Library]:
    """A library of the test's own, in a database of its own when the module runs on PostgreSQL."""
    database = request.getfixturevalue("postgres_url") if module_database else None
    lib = open_indexed(tmp_path / "data", tiny_bundle, own_album, database)
    yield lib
    lib.close()


@pytest.fixture()
def own_app(own_library: Library, web_dir: Path) -> Litestar:
    return create_app(own_library, web_dir=web_dir, background_index=False)


@pytest.fixture()
def own_client(own_app: Litestar) -> Iterator[TestClient]:
    with TestClient(own_app) as test_client:
        yield test_client


def _id_of(client: TestClient, name: str) -> int:
    """A photo's id, found through the API (text search over everything, matched by file name)."""
    hits = client.get("/api/search", params={"q": "a photo", "k": MAX_K}).json()["results"]
    return next(h["id"] for h in hits if h["path"].endswith("/" + name) or h["path"] == name)


def _detail(response) -> str:
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body["detail"]


class TestHealthAndSchema:
    def test_health_names_the_model(self, client: TestClient) -> None:
        response = client.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "model_id": "tiny-test"}

    def test_openapi_schema_lists_the_api(self, client: TestClient) -> None:
        schema = client.get("/schema/openapi.json").json()
        for path in ("/api/search", "/api/search/image", "/api/images/{photo_id}/similar",
                     "/api/images/{photo_id}/thumbnail", "/api/images/{photo_id}/file", "/api/status",
                     "/api/index/refresh", "/health"):
            assert path in schema["paths"], path
        params = {p["name"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}
        assert {"q", "k", "offset", "sort", "from", "to"} <= params


    def test_openapi_schema_states_the_limits_and_the_responses(self, client: TestClient) -> None:
        schema = client.get("/schema/openapi.json").json()
        paths = schema["paths"]

        def param(path: str, name: str) -> dict:
            return next(p["schema"] for p in paths[path]["get"]["parameters"] if p["name"] == name)

        assert (param("/api/search", "k")["minimum"], param("/api/search", "k")["maximum"]) == (1, MAX_K)
        assert param("/api/search", "offset")["maximum"] == 10_000
        assert (param("/api/search", "q")["minLength"], param("/api/search", "q")["maxLength"]) == (1, MAX_QUERY_CHARS)
        assert param("/api/search", "sort")["enum"] == ["relevance", "date"]
        assert param("/api/search", "from")["format"] == "date"
        thumbnail = "/api/images/{photo_id}/thumbnail"
        assert (param(thumbnail, "size")["minimum"], param(thumbnail, "size")["maximum"]) == (1, 1024)
        assert (param(thumbnail, "photo_id")["minimum"], param(thumbnail, "photo_id")["maximum"]) == (1, 2**63 - 1)
        error = {"$ref": "#/components/schemas/ErrorBody"}
        assert schema["components"]["schemas"]["ErrorBody"]["properties"] == {"detail": {"type": "string"}}
        for path, codes in {"/api/search": {"400", "503"}, "/api/images/{photo_id}": {"400", "404"},
                            "/api/images/{photo_id}/similar": {"400", "404", "409"},
                            thumbnail: {"400", "404", "422"}, "/api/images/{photo_id}/file": {"400", "404"}}.items():
            responses = paths[path]["get"]["responses"]
            assert codes <= set(responses), path
            assert all(responses[c]["content"]["application/json"]["schema"] == error for c in codes), path
        upload = paths["/api/search/image"]["post"]["responses"]
        assert {"400", "413", "422"} <= set(upload)
        assert "image/jpeg" in paths[thumbnail]["get"]["responses"]["200"]["content"]
        assert "304" in paths[thumbnail]["get"]["responses"]
        assert "image/*" in paths["/api/images/{photo_id}/file"]["get"]["responses"]["200"]["content"]


class TestTextSearch:
    def test_returns_hits_with_paths_scores_and_sizes(self, client: TestClient, album: Path) -> None:
        response = client.get("/api/search", params={"q": "a cat", "k": 5})
        assert response.status_code == 200
        body = response.json()
        assert len(body["results"]) == 5 and body["took_ms"] >= 0 and body["query"] == "a cat"
        scores = [h["score"] for h in body["results"]]
        assert scores == sorted(scores, reverse=True)
        for hit in body["results"]:
            assert (Path(hit["root"]) / hit["path"]).is_file()
            assert not Path(hit["path"]).is_absolute()
            assert hit["width"] > 0 and hit["height"] > 0

    def test_offset_pages_through_the_same_ranking(self, client: TestClient) -> None:
        everything = client.get("/api/search", params={"q": "a dog", "k": 10}).json()["results"]
        page = client.get("/api/search", params={"q": "a dog", "k": 3, "offset": 3}).json()["results"]
        assert [h["id"] for h in page] == [h["id"] for h in everything[3:6]]

    def test_the_broken_file_is_never_a_result(self, client: TestClient) -> None:
        hits = client.get("/api/search", params={"q": "anything", "k": MAX_K}).json()["results"]
        assert len(hits) == len(SAMPLE_PHOTOS) + 2
        assert not any(h["path"].endswith("broken.jpg") for h in hits)

    def test_date_range_keeps_photos_taken_inside_it(self, client: TestClient) -> None:
        hits = client.get("/api/search", params={"q": "a cat", "from": "2020-01-01", "to": "2023-12-31"}).json()
        assert [h["path"] for h in hits["results"]] == ["dated/coffee-2022.jpg"]
        assert hits["results"][0]["taken_at"].startswith("2022-01-15")
        both = client.get("/api/search", params={"q": "a cat", "from": "2019-07-01", "to": "2022-01-15"}).json()
        assert {h["path"] for h in both["results"]} == {"dated/cat-2019.jpg", "dated/coffee-2022.jpg"}

    def test_sort_by_date_puts_newest_first_and_undated_last(self, client: TestClient) -> None:
        hits = client.get("/api/search", params={"q": "a cat", "sort": "date", "k": 50}).json()["results"]
        assert [h["path"] for h in hits[:2]] == ["dated/coffee-2022.jpg", "dated/cat-2019.jpg"]
        assert all(h["taken_at"] is None for h in hits[2:])

    @pytest.mark.parametrize("params", [
        {"q": ""}, {"q": "   "}, {"q": "x" * (MAX_QUERY_CHARS + 1)}, {"q": "a cat", "k": 0},
        {"q": "a cat", "k": 1000}, {"q": "a cat", "k": -1}, {"q": "a cat", "offset": -1},
        {"q": "a cat", "sort": "random"}, {"q": "a cat", "from": "last year"}, {"q": "a cat", "to": "2024-02-30"},
        {"q": "a cat", "from": "2024-01-02", "to": "2024-01-01"},
    ])
    def test_bad_queries_get_400_with_a_message(self, client: TestClient, params: dict) -> None:
        response = client.get("/api/search", params=params)
        assert response.status_code == 400, response.text
        _detail(response)

    @pytest.mark.parametrize("params", [{}, {"q": "a cat", "k": "ten"}, {"q": "a cat", "offset": "1.5"}])
    def test_missing_or_malformed_parameters_get_400(self, client: TestClient, params: dict) -> None:
        response = client.get("/api/search", params=params)
        assert response.status_code == 400
        _detail(response)


class TestNoUnhandledErrors:
    """Inputs that once reached Python errors (500 and no log line): each is refused at the boundary."""

    @pytest.mark.parametrize("params", [{"to": "9999-12-31"}, {"from": "9999-12-31", "to": "9999-12-31"},
                                        {"from": "0001-01-01", "to": "9999-12-31"}])
    def test_the_last_representable_day_is_a_valid_inclusive_end(self, client: TestClient, params: dict) -> None:
        response = client.get("/api/search", params={"q": "a cat", **params})
        assert response.status_code == 200, response.text
        dated = {"dated/cat-2019.jpg", "dated/coffee-2022.jpg"}
        expected = set() if params.get("from") == "9999-12-31" else dated
        assert {h["path"] for h in response.json()["results"]} == expected

    @pytest.mark.parametrize("photo_id", ["9223372036854775808", "18446744073709551616", "0", "-1",
                                          "99999999999999999999999999999999"])
    @pytest.mark.parametrize("suffix", ["", "/similar", "/thumbnail", "/file"])
    def test_ids_beyond_64_bits_or_below_1_are_refused(self, client: TestClient, photo_id: str,
                                                       suffix: str) -> None:
        response = client.get(f"/api/images/{photo_id}{suffix}")
        assert response.status_code in (400, 404), response.text
        _detail(response)

    def test_a_parameter_out_of_its_declared_range_is_named_in_the_detail(self, client: TestClient) -> None:
        response = client.get("/api/search", params={"q": "a cat", "k": MAX_K + 1})
        assert response.status_code == 400
        assert response.json() == {"detail": f"query parameter 'k': Expected `int` <= {MAX_K}"}

    def test_similar_for_a_photo_without_a_vector_is_a_conflict(self, client: TestClient) -> None:
        broken = next(p for p in range(1, 50) if client.get(f"/api/images/{p}").json()["status"] == "failed")
        response = client.get(f"/api/images/{broken}/similar")
        assert response.status_code == 409 and "no vector" in _detail(response)

    def test_the_largest_id_is_simply_not_found(self, client: TestClient) -> None:
        response = client.get(f"/api/images/{2**63 - 1}/similar")
        assert response.status_code == 404 and str(2**63 - 1) in _detail(response)

    @pytest.mark.parametrize("url", ["/index.html%00.jpg", "/%00", "/app.js%00"])
    def test_a_null_byte_in_a_static_path_is_not_found(self, client: TestClient, url: str) -> None:
        assert client.get(url).status_code == 404

    def test_any_other_error_is_logged_and_answered_as_json(self, own_app: Litestar, own_library: Library,
                                                           caplog: pytest.LogCaptureFixture) -> None:
        def broken(*args, **kwargs):
            raise ZeroDivisionError("a bug somewhere deep")

        own_library.search_text = broken  # type: ignore[method-assign]
        with TestClient(own_app, raise_server_exceptions=False) as client, caplog.at_level("ERROR"):
            response = client.get("/api/search", params={"q": "a cat"})
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error; see the server log"}
        logged = [r for r in caplog.records if r.levelname == "ERROR" and r.exc_info]
        assert logged and "a bug somewhere deep" in str(logged[0].exc_info[1])
        assert "/api/search" in logged[0].getMessage()


class TestSimilar:
    def test_more_like_a_photo_leaves_it_out(self, client: TestClient) -> None:
        cat = _id_of(client, "chelsea.png")
        response = client.get(f"/api/images/{cat}/similar", params={"k": 4})
        assert response.status_code == 200
        hits = response.json()["results"]
        assert len(hits) == 4 and cat not in [h["id"] for h in hits]
        # The JPEG crop of the same cat is its nearest neighbour even under a random model.
        assert hits[0]["path"] == "dated/cat-2019.jpg"

    def test_unknown_id_is_404(self, client: TestClient) -> None:
        response = client.get("/api/images/999999/similar")
        assert response.status_code == 404
        assert "999999" in _detail(response)

    def test_bad_k_is_400(self, client: TestClient) -> None:
        cat = _id_of(client, "chelsea.png")
        assert client.get(f"/api/images/{cat}/similar", params={"k": 0}).status_code == 400

    def test_non_numeric_id_is_not_found(self, client: TestClient) -> None:
        assert client.get("/api/images/chelsea.png/similar").status_code in (400, 404)


class TestImageSearch:
    def test_an_uploaded_photo_finds_itself_first(self, client: TestClient) -> None:
        payload = (skimage_data_dir() / "rocket.jpg").read_bytes()
        response = client.post("/api/search/image", files={"file": ("rocket.jpg", payload, "image/jpeg")},
                               params={"k": 3})
        assert response.status_code == 200, response.text
        hits = response.json()["results"]
        assert hits[0]["path"].endswith("rocket.jpg") and hits[0]["score"] > 0.99

    def test_a_non_image_upload_is_422(self, client: TestClient) -> None:
        response = client.post("/api/search/image", files={"file": ("notes.txt", b"just some text", "text/plain")})
        assert response.status_code == 422
        assert "image" in _detail(response) and "<_io" not in _detail(response)  # no Python internals

    def test_an_empty_upload_is_400(self, client: TestClient) -> None:
        response = client.post("/api/search/image", files={"file": ("empty.jpg", b"", "image/jpeg")})
        assert response.status_code == 400

    def test_a_missing_file_field_is_400(self, client: TestClient) -> None:
        response = client.post("/api/search/image", files={"photo": ("x.jpg", b"abc", "image/jpeg")})
        assert response.status_code == 400

    def test_an_oversize_upload_is_413(self, client: TestClient) -> None:
        payload = b"\xff\xd8" + bytes(MAX_UPLOAD_BYTES + 200_000)
        response = client.post("/api/search/image", files={"file": ("huge.jpg", payload, "image/jpeg")})
        assert response.status_code == 413
        _detail(response)

    def test_a_decompression_bomb_is_refused(self, client: TestClient) -> None:
        buf = io.BytesIO()
        Image.new("1", (12_000, 12_000)).save(buf, "PNG")  # 144 MP, a few kB on the wire
        response = client.post("/api/search/image", files={"file": ("bomb.png", buf.getvalue(), "image/png")})
        assert response.status_code == 422
        assert "12000x12000 is 144 MP, over the 100 MP limit" in _detail(response)  # our guard, not PIL's

    def test_uploads_beyond_the_decode_slots_get_503_try_again(self, client: TestClient,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
        from clipalbum.server.api import UPLOAD_GATE

        photo = (skimage_data_dir() / "coffee.png").read_bytes()
        # As if the slots were decoding and the queue full of other uploads:
        monkeypatch.setattr(UPLOAD_GATE, "admitted", UPLOAD_GATE.slots + UPLOAD_GATE.queue)
        response = client.post("/api/search/image", files={"file": ("coffee.png", photo, "image/png")})
        assert response.status_code == 503 and "try again" in _detail(response)
        assert response.headers["retry-after"] == "5"
        monkeypatch.undo()
        assert client.post("/api/search/image", files={"file": ("coffee.png", photo, "image/png")}).status_code == 200

    def test_an_upload_waits_once_for_a_slot_and_the_decode_budget_together(
            self, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
        import clipalbum.server.library as library_module
        from clipalbum.server.api import UPLOAD_GATE

        waits: list[float | None] = []
        load = library_module.load_model_input
        monkeypatch.setattr(library_module, "load_model_input",
                            lambda source, spec, wait=None: waits.append(wait) or load(source, spec, wait=wait))
        monkeypatch.setattr(UPLOAD_GATE, "wait_s", 2.0)
        photo = (skimage_data_dir() / "coffee.png").read_bytes()
        assert client.post("/api/search/image", files={"file": ("coffee.png", photo, "image/png")}).status_code == 200
        assert len(waits) == 1 and waits[0] is not None and 0 <= waits[0] <= 2.0  # what is left of the gate's

class TestPhotoEndpoints:
    def test_metadata(self, client: TestClient, album: Path) -> None:
        coffee = _id_of(client, "coffee-2022.jpg")
        info = client.get(f"/api/images/{coffee}").json()
        assert info["path"] == "dated/coffee-2022.jpg" and info["name"] == "coffee-2022.jpg"
        assert info["root"] == str(album.resolve())
        assert info["size"] == (album / "dated" / "coffee-2022.jpg").stat().st_size
        assert (info["width"], info["height"]) == (600, 400)
        assert info["taken_at"].startswith("2022-01-15T08:30")
        assert info["content_type"] == "image/jpeg"
        assert info["status"] == "indexed" and info["error"] is None
        assert info["thumbnail_url"] == f"/api/images/{coffee}/thumbnail"

    def test_unknown_photo_is_404(self, client: TestClient) -> None:
        assert client.get("/api/images/424242").status_code == 404
        assert client.get("/api/images/424242/thumbnail").status_code == 404
        assert client.get("/api/images/424242/file").status_code == 404

    def test_original_is_served_byte_for_byte(self, client: TestClient, album: Path) -> None:
        cat = _id_of(client, "chelsea.png")
        response = client.get(f"/api/images/{cat}/file")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        original = next(album.rglob("chelsea.png"))
        assert response.content == original.read_bytes()
        again = client.get(f"/api/images/{cat}/file", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b""

    def test_a_photo_deleted_since_the_scan_is_404_not_500(self, own_client: TestClient, own_album: Path) -> None:
        rocket = _id_of(own_client, "rocket.jpg")
        next(own_album.rglob("rocket.jpg")).unlink()
        for url in (f"/api/images/{rocket}/file", f"/api/images/{rocket}/thumbnail"):
            response = own_client.get(url)
            assert response.status_code == 404
            assert "gone" in _detail(response)

    def test_no_client_path_reaches_the_disk(self, client: TestClient) -> None:
        for url in ("/api/images/../../etc/passwd", "/api/images/%2e%2e%2fetc%2fpasswd/file",
                    "/api/images/1/file/../../../../etc/passwd", "/../../etc/passwd"):
            response = client.get(url)
            assert response.status_code in (400, 404), url
            assert b"root:" not in response.content

    def test_thumbnail_is_a_small_jpeg_with_caching_headers(self, client: TestClient) -> None:
        astronaut = _id_of(client, "astronaut.png")
        response = client.get(f"/api/images/{astronaut}/thumbnail", params={"size": 128})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert "max-age" in response.headers["cache-control"]
        etag = response.headers["etag"]
        with Image.open(io.BytesIO(response.content)) as img:
            assert img.format == "JPEG" and max(img.size) == 128
        cached = client.get(f"/api/images/{astronaut}/thumbnail", params={"size": 128},
                            headers={"If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
        other_size = client.get(f"/api/images/{astronaut}/thumbnail", params={"size": 512},
                                headers={"If-None-Match": etag})
        assert other_size.status_code == 200 and other_size.headers["etag"] != etag

    def test_thumbnails_are_cached_on_disk(self, own_client: TestClient, own_library: Library) -> None:
        coffee = _id_of(own_client, "coffee.png")
        assert own_client.get(f"/api/images/{coffee}/thumbnail").status_code == 200
        files = list(own_library.paths.thumbnails.rglob("*.jpg"))
        assert len(files) == 1
        stamp = files[0].stat().st_mtime_ns
        assert own_client.get(f"/api/images/{coffee}/thumbnail").status_code == 200
        assert files[0].stat().st_mtime_ns == stamp

    @pytest.mark.parametrize("size", [0, -3, 5000, "big"])
    def test_bad_thumbnail_size_is_400(self, client: TestClient, size) -> None:
        coffee = _id_of(client, "coffee.png")
        response = client.get(f"/api/images/{coffee}/thumbnail", params={"size": size})
        assert response.status_code == 400

    def test_serving_never_writes_to_the_album(self, client: TestClient, album: Path) -> None:
        before = snapshot(album)
        for name in ("chelsea.png", "rocket.jpg", "coffee-2022.jpg"):
            photo_id = _id_of(client, name)
            client.get(f"/api/images/{photo_id}/thumbnail")
            client.get(f"/api/images/{photo_id}/file")
        assert snapshot(album) == before


class TestStatusAndRefresh:
    def test_status_counts_and_lists_the_broken_file(self, client: TestClient, album: Path) -> None:
        status = client.get("/api/status").json()
        assert status["indexed"] == len(SAMPLE_PHOTOS) + 2
        assert status["failed"] == 1 and status["pending"] == 0
        assert status["model_id"] == "tiny-test" and status["embed_dim"] == 16
        assert status["roots"] == [str(album.resolve())]
        assert status["errors"][0]["path"].endswith("broken.jpg") and status["errors"][0]["error"]
        assert status["progress"]["running"] is False
        assert status["errors_truncated"] is False

    def test_status_says_when_it_lists_only_some_failures(self, client: TestClient) -> None:
        status = client.get("/api/status", params={"max_errors": 0}).json()
        assert status["failed"] == 1 and status["errors"] == [] and status["errors_truncated"] is True

    def test_refresh_picks_up_a_new_photo(self, own_client: TestClient, own_app: Litestar, own_album: Path) -> None:
        new = own_album / "new" / "horse.png"
        new.parent.mkdir()
        new.write_bytes((skimage_data_dir() / "horse.png").read_bytes())
        response = own_client.post("/api/index/refresh")
        assert response.status_code == 202
        assert response.json()["state"] in ("started", "queued")
        assert own_app.state.indexer.wait_idle(60)
        assert own_client.get("/api/status").json()["indexed"] == len(SAMPLE_PHOTOS) + 3
        hits = own_client.get("/api/search", params={"q": "a horse", "k": MAX_K}).json()["results"]
        assert "new/horse.png" in [h["path"] for h in hits]

    def test_refreshes_during_a_scan_are_coalesced(self, own_library: Library, web_dir: Path) -> None:
        library = own_library
        app = create_app(library, web_dir=web_dir, background_index=False)
        indexer = app.state.indexer
        scans = []
        original_index = library.index

        def slow_index(**kwargs):
            scans.append(time.monotonic())
            time.sleep(0.3)
            return original_index(**kwargs)

        library.index = slow_index  # type: ignore[method-assign]
        with TestClient(app) as client:
            assert client.post("/api/index/refresh").json()["state"] == "started"
            deadline = time.monotonic() + 5
            while not indexer.scanning and time.monotonic() < deadline:
                time.sleep(0.01)
            states = [client.post("/api/index/refresh").json()["state"] for _ in range(3)]
            assert states == ["queued"] * 3
            assert indexer.wait_idle(30)
        assert len(scans) == 2  # the running scan plus one follow-up for the three requests


    def test_a_failing_scan_keeps_the_server_and_the_indexer_alive(self, own_library: Library,
                                                                   web_dir: Path) -> None:
        library = own_library
        app = create_app(library, web_dir=web_dir, background_index=False)
        indexer = app.state.indexer
        original_index = library.index
        calls = []

        def failing_once(**kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise OSError("disk went away")
            return original_index(**kwargs)

        library.index = failing_once  # type: ignore[method-assign]
        with TestClient(app) as client:
            client.post("/api/index/refresh")
            assert indexer.wait_idle(30)
            assert "disk went away" in (indexer.last_error or "")
            assert client.get("/api/search", params={"q": "a cat"}).status_code == 200
            client.post("/api/index/refresh")
            assert indexer.wait_idle(30)
        assert len(calls) == 2 and indexer.last_error is None


class TestBackgroundIndexing:
    def test_answers_while_the_first_scan_runs_then_finds_everything(self, tmp_path: Path, tiny_bundle: Path,
                                                                    album: Path, web_dir: Path) -> None:
        lib = Library.open(data_paths(tmp_path / "fresh"), model=tiny_bundle, roots=[str(album)])
        try:
            app = create_app(lib, web_dir=web_dir, background_index=True, rescan_minutes=0)
            with TestClient(app) as client:
                assert client.get("/health").status_code == 200
                first = client.get("/api/search", params={"q": "a cat"})
                assert first.status_code == 200  # empty or partial while the scan runs, never an error
                assert client.get("/api/status").status_code == 200
                assert app.state.indexer.wait_idle(120)
                assert client.get("/api/status").json()["indexed"] == len(SAMPLE_PHOTOS) + 2
                assert len(client.get("/api/search", params={"q": "a cat", "k": 50}).json()["results"]) == \
                    len(SAMPLE_PHOTOS) + 2
        finally:
            lib.close()


class TestStaticClient:
    def test_index_page_with_etag_and_revalidation(self, client: TestClient) -> None:
        page = client.get("/")
        assert page.status_code == 200 and page.text == WEB_INDEX
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        again = client.get("/", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304 and again.content == b""

    def test_modules_are_served_as_javascript(self, client: TestClient) -> None:
        script = client.get("/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert client.get("/app.js", headers={"If-None-Match": '"something-else"'}).status_code == 200

    def test_a_missing_file_is_404(self, client: TestClient) -> None:
        assert client.get("/missing.js").status_code == 404

    def test_without_a_web_folder_the_api_still_works(self, library: Library, tmp_path: Path) -> None:
        app = create_app(library, web_dir=tmp_path / "no-such-folder", background_index=False)
        with TestClient(app) as client:
            assert client.get("/").status_code == 404
            assert client.get("/health").status_code == 200
