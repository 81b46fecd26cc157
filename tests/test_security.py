"""Who may talk to the server: Host allow-list, cross-site refusal, the token beyond loopback, CORS, `clipalbum token`."""

from __future__ import annotations

import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from litestar import Litestar
from litestar.testing import TestClient

from clipalbum.server import cli
from clipalbum.server.app import create_app, exposure_notice
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.library import Library
from clipalbum.server.security import COOKIE_NAME, AccessPolicy, TokenStore, cookie_value
from tests.albumtools import jpeg_bytes
from tests.conftest import skimage_data_dir
from tests.test_api import album, library, web_dir  # noqa: F401  (shared module fixtures: one indexed album)

EVIL = "evil.example"


def photo_upload() -> dict:
    from PIL import Image

    return {"file": ("query.jpg", jpeg_bytes(Image.new("RGB", (64, 48), (200, 30, 30))), "image/jpeg")}


def remote_policy(token_file: Path, **kwargs) -> AccessPolicy:
    """A server bound to every interface: the token is required."""
    return AccessPolicy.for_server("0.0.0.0", token_file, **kwargs)


@pytest.fixture()
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "token"


@pytest.fixture()
def remote_app(library: Library, web_dir: Path, token_file: Path) -> Litestar:  # noqa: F811
    return create_app(library, web_dir=web_dir, background_index=False, access=remote_policy(token_file))


@pytest.fixture()
def remote(remote_app: Litestar) -> Iterator[TestClient]:
    with TestClient(remote_app) as client:
        yield client


@pytest.fixture()
def local(library: Library, web_dir: Path) -> Iterator[TestClient]:  # noqa: F811
    """The app as create_app makes it by default: a server on loopback."""
    with TestClient(create_app(library, web_dir=web_dir, background_index=False)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def a_photo_id(client: TestClient, headers: dict[str, str] | None = None) -> int:
    return client.get("/api/search", params={"q": "a cat"}, headers=headers or {}).json()["results"][0]["id"]


# Everything that reads or changes album data, the schema that describes it, and an unknown path.
def protected_requests(photo_id: int) -> list[tuple[str, str, dict]]:
    return [
        ("GET", "/api/status", {}),
        ("GET", "/api/search?q=a+cat", {}),
        ("GET", f"/api/images/{photo_id}", {}),
        ("GET", f"/api/images/{photo_id}/similar", {}),
        ("GET", f"/api/images/{photo_id}/thumbnail", {}),
        ("GET", f"/api/images/{photo_id}/file", {}),
        ("GET", "/schema/openapi.json", {}),
        ("GET", "/no-such-page", {}),
        ("POST", "/api/index/refresh", {}),
        ("POST", "/api/search/image", {"files": photo_upload()}),
    ]


class TestTokenBeyondLoopback:
    def test_album_data_and_the_schema_need_the_token(self, remote: TestClient, token_file: Path,
                                                      local: TestClient) -> None:
        photo_id = a_photo_id(local)
        for method, path, extra in protected_requests(photo_id):
            response = remote.request(method, path, **extra)
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "clipalbum token" in response.json()["detail"]
        token = TokenStore(token_file).current()
        for method, path, extra in protected_requests(photo_id):
            response = remote.request(method, path, headers=bearer(token), **extra)
            assert response.status_code in (200, 202, 404), (method, path, response.status_code)
            assert response.status_code == 404 or path != "/no-such-page"

    def test_a_wrong_token_or_scheme_is_401(self, remote: TestClient, token_file: Path) -> None:
        token = TokenStore(token_file).current()
        for headers in (bearer("x" * 43), bearer(token[:-1]), {"Authorization": f"Basic {token}"},
                        {"Cookie": f"{COOKIE_NAME}={token}"}):
            assert remote.get("/api/status", headers=headers).status_code == 401, headers

    def test_the_page_itself_health_and_the_login_answer_without_it(self, remote: TestClient) -> None:
        assert remote.get("/").status_code == 200
        assert remote.get("/app.js").status_code == 200
        assert remote.get("/health").status_code == 200
        assert remote.get("/api/session").json() == {"token_required": True, "authenticated": False, "via": None}
        # The web client's exemption is for its own files only, read with GET.
        assert remote.get("/../token").status_code in (401, 404)
        assert remote.post("/app.js").status_code == 401
        # Names no file can have are simply not the client's files (a NUL byte once made this a 500).
        assert remote.get("/index.html%00.jpg").status_code == 401
        assert remote.get("/" + "x" * 5000).status_code == 401

    def test_login_sets_a_strict_httponly_cookie_that_opens_the_api(self, remote: TestClient,
                                                                     token_file: Path) -> None:
        token = TokenStore(token_file).current()
        wrong = remote.post("/api/login", json={"token": "not-it"})
        assert wrong.status_code == 401 and "access token" in wrong.json()["detail"]
        assert COOKIE_NAME not in remote.cookies
        login = remote.post("/api/login", json={"token": token})
        assert login.status_code == 200
        set_cookie = login.headers["set-cookie"]
        assert f"{COOKIE_NAME}={cookie_value(token)}" in set_cookie
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
            assert attribute.lower() in set_cookie.lower(), set_cookie
        assert "secure" not in set_cookie.lower()  # plain http: a Secure cookie would never come back
        assert token not in set_cookie  # the cookie is derived from the token, not the token
        assert remote.get("/api/status").status_code == 200
        assert remote.get("/api/session").json() == {"token_required": True, "authenticated": True, "via": "cookie"}
        logout = remote.post("/api/logout")
        assert logout.status_code == 200
        assert remote.get("/api/status").status_code == 401

    def test_a_login_form_post_works_and_https_makes_the_cookie_secure(self, remote_app: Litestar,
                                                                      token_file: Path) -> None:
        token = TokenStore(token_file).current()
        with TestClient(remote_app, base_url="https://127.0.0.1") as client:
            login = client.post("/api/login", data={"token": token})
            assert login.status_code == 200
            assert "secure" in login.headers["set-cookie"].lower()

    def test_rotation_invalidates_old_tokens_and_cookies_in_a_running_server(self, remote: TestClient,
                                                                             token_file: Path) -> None:
        old = TokenStore(token_file).current()
        assert remote.post("/api/login", json={"token": old}).status_code == 200
        assert remote.get("/api/status").status_code == 200
        new = TokenStore(token_file).rotate()
        assert new != old
        assert remote.get("/api/status").status_code == 401  # the old cookie
        assert remote.get("/api/status", headers=bearer(old)).status_code == 401
        assert remote.get("/api/status", headers=bearer(new)).status_code == 200

    def test_the_token_file_is_private_and_made_once(self, token_file: Path) -> None:
        stores = [TokenStore(token_file) for _ in range(8)]
        created: list[bool] = []
        threads = [threading.Thread(target=lambda s=s: created.append(s.ensure())) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert created.count(True) == 1
        assert len({s.current() for s in stores}) == 1 and len(stores[0].current()) >= 40
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert [p.name for p in token_file.parent.iterdir()] == ["token"]  # no temporary files left
        token_file.chmod(0o644)
        TokenStore(token_file).current()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    def test_an_empty_token_file_refuses_everyone_and_says_how_to_fix_it(self, remote: TestClient,
                                                                          token_file: Path) -> None:
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text("\n")
        token_file.chmod(0o600)
        response = remote.get("/api/status", headers=bearer(""))
        assert response.status_code == 503 and "--rotate" in response.json()["detail"]


class TestLoopback:
    def test_nothing_needs_a_token(self, local: TestClient) -> None:
        assert local.get("/api/status").status_code == 200
        assert local.get("/schema/openapi.json").status_code == 200
        assert local.get(f"/api/images/{a_photo_id(local)}/file").status_code == 200
        assert local.post("/api/index/refresh").status_code == 202
        assert local.get("/api/session").json() == {"token_required": False, "authenticated": True, "via": None}

    def test_a_proxy_name_or_require_token_turns_the_token_on(self, tmp_path: Path) -> None:
        token = tmp_path / "token"
        assert not AccessPolicy.for_server("127.0.0.1", token).token_required
        assert not AccessPolicy.for_server("localhost", token).token_required
        assert AccessPolicy.for_server("127.0.0.1", token, require_token=True).token_required
        assert AccessPolicy.for_server("127.0.0.1", token, allowed_hosts=["album.example.com"]).token_required
        for host in ("0.0.0.0", "::", "192.168.1.20", "myhost"):
            assert AccessPolicy.for_server(host, token).token_required, host


    @pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Forwarded-Host", "X-Real-IP"])
    def test_a_proxy_in_front_of_a_tokenless_server_is_refused(self, local: TestClient, remote: TestClient,
                                                              token_file: Path, header: str) -> None:
        # nginx without `proxy_set_header Host` sends Host: 127.0.0.1: only the proxy's headers give it away.
        response = local.get("/api/status", headers={header: "192.0.2.7"})
        assert response.status_code == 403 and "--allowed-host" in response.json()["detail"]
        token = TokenStore(token_file).current()  # with a token the proxy's callers must show it anyway
        assert remote.get("/api/status", headers={header: "192.0.2.7", **bearer(token)}).status_code == 200

    def test_paths_spelled_oddly_still_need_the_token(self, remote: TestClient) -> None:
        for path in ("//api/status", "/api//status/", "///schema//openapi.json", "/./api/status"):
            assert remote.get(path).status_code in (401, 404), path


class TestBodyLimits:
    def test_only_the_photo_upload_takes_a_large_body(self, local: TestClient, remote: TestClient) -> None:
        big = b"x" * (200 * 1024)  # the login reads its body before anyone is known: it must be small
        assert remote.post("/api/login", content=big, headers={"Content-Type": "application/json"}).status_code == 413
        assert remote.post("/api/login", data={"token": "x" * 100_000}).status_code == 413
        photo = {"file": ("coffee.png", (skimage_data_dir() / "coffee.png").read_bytes(), "image/png")}
        assert len(photo["file"][1]) > len(big)
        assert local.post("/api/search/image", files=photo).status_code == 200


class TestHostAllowList:
    @pytest.mark.parametrize("host", [EVIL, f"{EVIL}:8000", "127.0.0.1.nip.io", "localhost.evil.example"])
    def test_unknown_names_are_refused_on_loopback_and_beyond(self, local: TestClient, remote: TestClient,
                                                             host: str) -> None:
        for client in (local, remote):
            for path in ("/api/status", "/", "/health"):
                response = client.get(path, headers={"Host": host})
                assert response.status_code == 421, (host, path)
                assert "--allowed-host" in response.json()["detail"]

    @pytest.mark.parametrize("host", ["localhost", "localhost:8000", "album.localhost:8000", "127.0.0.1:8000",
                                      "[::1]:8000", "192.168.1.20:8000", "LOCALHOST."])
    def test_loopback_names_and_addresses_are_accepted(self, local: TestClient, host: str) -> None:
        assert local.get("/api/status", headers={"Host": host}).status_code == 200

    def test_the_machine_name_and_allowed_hosts_are_accepted(self, library: Library,  # noqa: F811
                                                             web_dir: Path, tmp_path: Path) -> None:
        policy = AccessPolicy.for_server("127.0.0.1", tmp_path / "token", allowed_hosts=["Album.Example.com"])
        with TestClient(create_app(library, web_dir=web_dir, background_index=False, access=policy)) as client:
            for host in ("album.example.com", "album.example.com:443", socket.gethostname(),
                         f"{socket.gethostname().split('.')[0]}.local"):
                assert client.get("/health", headers={"Host": host}).status_code == 200, host
            assert client.get("/health", headers={"Host": "other.example.com"}).status_code == 421


class TestCrossSiteRefusal:
    def test_a_cross_site_text_plain_post_cannot_start_a_scan(self, local: TestClient) -> None:
        # What a form or fetch(no-cors) on any web page can send without a preflight.
        response = local.post("/api/index/refresh", content=b"x", headers={
            "Content-Type": "text/plain", "Origin": f"http://{EVIL}", "Sec-Fetch-Site": "cross-site"})
        assert response.status_code == 403 and "cross-site" in response.json()["detail"]
        response = local.post("/api/index/refresh", content=b"x", headers={
            "Content-Type": "text/plain", "Origin": f"http://{EVIL}"})  # an older browser: Origin only
        assert response.status_code == 403

    def test_a_cross_site_upload_is_refused(self, local: TestClient) -> None:
        response = local.post("/api/search/image", files=photo_upload(),
                              headers={"Origin": f"http://{EVIL}", "Sec-Fetch-Site": "cross-site"})
        assert response.status_code == 403

    @pytest.mark.parametrize("headers", [
        {"Origin": "http://localhost:3000"},  # another server on this machine: same site, other origin
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
    ])
    def test_other_origins_on_the_same_machine_are_refused(self, local: TestClient, headers: dict) -> None:
        headers = {"Host": "localhost:8000", **headers}
        assert local.post("/api/index/refresh", headers=headers).status_code == 403

    @pytest.mark.parametrize("headers", [
        {"Origin": "http://localhost:8000", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://localhost:8000"},
        {},  # curl and API clients send no Origin
    ])
    def test_the_page_itself_and_api_clients_may_post(self, local: TestClient, headers: dict) -> None:
        response = local.post("/api/index/refresh", headers={"Host": "localhost:8000", **headers})
        assert response.status_code == 202
        upload = local.post("/api/search/image", files=photo_upload(), headers={"Host": "localhost:8000", **headers})
        assert upload.status_code == 200

    def test_behind_a_tls_proxy_the_origin_may_imply_port_443(self, local: TestClient) -> None:
        assert AccessPolicy(allowed_hosts=frozenset({"album.example.com"})).check_origin(
            "POST", "album.example.com", "https://album.example.com", "same-origin") is None


class TestCors:
    def test_no_cors_headers_unless_configured(self, local: TestClient) -> None:
        response = local.get("/api/status", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers
        preflight = local.options("/api/status", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in preflight.headers

    def test_a_configured_origin_may_call_the_api_with_the_token(self, library: Library,  # noqa: F811
                                                                 web_dir: Path, token_file: Path) -> None:
        origin = "https://app.example"
        policy = remote_policy(token_file, cors_origins=[origin])
        token = TokenStore(token_file).current()
        with TestClient(create_app(library, web_dir=web_dir, background_index=False, access=policy)) as client:
            preflight = client.options("/api/index/refresh", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization"})
            assert preflight.status_code in (200, 204)
            assert preflight.headers["access-control-allow-origin"] == origin
            response = client.post("/api/index/refresh", headers={"Origin": origin, **bearer(token)})
            assert response.status_code == 202
            assert response.headers["access-control-allow-origin"] == origin
            refused = client.get("/api/status", headers={"Origin": origin})
            assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin
            other = client.post("/api/index/refresh", headers={"Origin": f"https://{EVIL}", **bearer(token)})
            assert other.status_code == 403


class TestServeAndCli:
    def test_serve_says_the_album_is_on_the_network_and_shows_a_new_token_once(self, tmp_path: Path) -> None:
        policy = AccessPolicy.for_server("0.0.0.0", tmp_path / "token")
        first = "\n".join(exposure_notice(policy, "TOKEN123"))
        assert "reachable from the network" in first and "TOKEN123" in first and "clipalbum token" in first
        later = "\n".join(exposure_notice(policy, None))
        assert "clipalbum token" in later and "TOKEN123" not in later
        assert exposure_notice(AccessPolicy.for_server("127.0.0.1", tmp_path / "token"), None) == []

    def test_a_data_dir_that_cannot_hold_the_token_is_a_clear_error(self, tmp_path: Path) -> None:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        with pytest.raises(ClipalbumError, match="cannot create the access token"):
            TokenStore(blocker / "token").current()

    def test_clipalbum_token_shows_and_rotates_the_token(self, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
        data = tmp_path / "data"
        assert cli.main(["token", "--data-dir", str(data)]) == 0
        first = capsys.readouterr().out.strip()
        assert cli.main(["token", "--data-dir", str(data)]) == 0
        assert capsys.readouterr().out.strip() == first
        assert stat.S_IMODE((data / "token").stat().st_mode) == 0o600
        assert cli.main(["token", "--data-dir", str(data), "--rotate"]) == 0
        rotated = capsys.readouterr().out.strip()
        assert rotated != first and (data / "token").read_text().strip() == rotated


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_real_server_on_every_interface_needs_the_token(library: Library, web_dir: Path,  # noqa: F811
                                                          token_file: Path) -> None:
    """uvicorn bound to 0.0.0.0 on a real socket, reached through 127.0.0.1."""
    port = free_port()
    app = create_app(library, web_dir=web_dir, background_index=False, access=remote_policy(token_file))
    server = uvicorn.Server(uvicorn.Config(app, host="0.0.0.0", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            token = TokenStore(token_file).current()
            assert client.get("/api/status").status_code == 401
            assert client.get("/api/status", headers=bearer(token)).status_code == 200
            assert client.get("/api/status", headers={"Host": EVIL, **bearer(token)}).status_code == 421
            cross = client.post("/api/index/refresh", content=b"x", headers={
                "Content-Type": "text/plain", "Origin": f"http://{EVIL}", **bearer(token)})
            assert cross.status_code == 403
            assert client.post("/api/login", json={"token": token}).status_code == 200
            assert client.get("/api/status").status_code == 200  # the cookie, over a real socket
    finally:
        server.should_exit = True
        thread.join(timeout=20)
