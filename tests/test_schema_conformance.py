"""Every operation of the live OpenAPI schema, fuzzed by schemathesis (all checks) against a real server on
loopback: no server errors, and every response as the schema documents it (status, body, content type)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from clipalbum.server.app import OPENAPI_PATH, create_app
from tests.test_api import make_album, make_web_dir, open_indexed

pytest.importorskip("schemathesis", reason="schema conformance needs clipalbum[dev]")

EXAMPLES_PER_OPERATION = 30  # bounded, so the whole run stays well under a minute on one core
HOOKS = "tests.schemathesis_hooks"  # what the schema cannot say (from <= to, a non-empty upload)
REPO = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).with_name("schemathesis.toml")  # 422 for a schema-valid file that is no photo


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (loopback: no token) over a small indexed album."""
    root = tmp_path_factory.mktemp("conformance")
    library = open_indexed(root / "data", tiny_bundle, make_album(root / "album"))
    app = create_app(library, web_dir=make_web_dir(root / "web"), background_index=False)
    # The fuzzer asks for hundreds of enhancement jobs within seconds; a full queue answers 503 (try again),
    # which it would count as a server error. Enough room for all of them, as for a patient user.
    app.state.enhance_jobs.max_waiting = 100_000
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="conformance-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        library.close()


@pytest.mark.slow
def test_the_api_conforms_to_its_schema(base_url: str, tmp_path: Path) -> None:
    # The CLI rather than the pytest plugin: it runs every phase (examples, coverage, fuzzing, stateful)
    # and every check, as a user would run it against their own server (and schemathesis 4.32's lazy
    # pytest fixture reads Function._nodeid, which pytest 9 no longer has).
    cli = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    done = subprocess.run(
        [cli, "--config-file", str(CONFIG), "--no-color", "run", f"{base_url}{OPENAPI_PATH}/openapi.json",
         "--checks", "all", "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "1", "--workers", "1",
         "--generation-database", "none", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # its crash cache goes there, not in the checkout
        env={**os.environ, "SCHEMATHESIS_HOOKS": HOOKS,
             "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


@pytest.mark.parametrize("raw_path", ["/index.html%00.jpg", "/api/images/1%00/file", "/%00"])
def test_a_null_byte_through_the_real_server_is_a_4xx_never_a_500(base_url: str, raw_path: str) -> None:
    # Sent as raw bytes (httpx would not re-encode them), decoded by uvicorn as a user's browser would be.
    with httpx.Client() as client:
        request = client.build_request("GET", base_url)
        request.url = request.url.copy_with(raw_path=raw_path.encode())
        response = client.send(request)
    assert response.status_code in (400, 404), response.text
    assert isinstance(response.json()["detail"], str)
