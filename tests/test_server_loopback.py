"""A real `clipalbum serve` (and `clipalbum demo`) on loopback, with the real default model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, SAMPLE_PHOTOS, skimage_data_dir

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 180.0  # loading the model on a busy 2-core CI machine
INDEX_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(args: list[str], port: int, log_file: Path, env: dict[str, str] | None = None
            ) -> Iterator[httpx.Client]:
    """Starts `clipalbum ARGS` in a subprocess, waits for /health, yields a client; stops it with SIGTERM."""
    command = [sys.executable, "-m", "clipalbum.server.cli", *args]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(base_url=base, timeout=60.0) as client:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"server exited with {proc.returncode}:\n{log_file.read_text(errors='replace')}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"no /health within {START_TIMEOUT_S} s:\n{log_file.read_text(errors='replace')}")
                time.sleep(0.2)
            yield client
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_file.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_indexed(client: httpx.Client, count: int) -> dict:
    deadline = time.monotonic() + INDEX_TIMEOUT_S
    while time.monotonic() < deadline:
        status = client.get("/api/status").json()
        if status["indexed"] >= count and not status["progress"]["running"]:
            return status
        time.sleep(0.3)
    pytest.fail(f"not indexed within {INDEX_TIMEOUT_S} s: {status}")


def test_serve_indexes_in_the_background_and_answers(tmp_path: Path, default_bundle: Path,
                                                    sample_album: Path, database: str | None) -> None:
    port = free_port()
    args = ["serve", "--album", str(sample_album), "--port", str(port), "--data-dir", str(tmp_path / "data"),
            "--model", str(default_bundle), *(["--database", database] if database else [])]
    with running(args, port, tmp_path / "serve.log") as client:
        status = wait_indexed(client, len(SAMPLE_PHOTOS))
        assert status["failed"] == 0 and status["roots"] == [str(sample_album.resolve())]

        cat = client.get("/api/search", params={"q": "a cat", "k": 5}).json()["results"]
        assert cat[0]["path"].endswith("chelsea.png"), cat

        similar = client.get(f"/api/images/{cat[0]['id']}/similar", params={"k": 3})
        assert similar.status_code == 200 and len(similar.json()["results"]) == 3

        coffee = (skimage_data_dir() / "coffee.png").read_bytes()
        by_photo = client.post("/api/search/image", files={"file": ("coffee.png", coffee, "image/png")})
        assert by_photo.status_code == 200
        assert by_photo.json()["results"][0]["path"].endswith("coffee.png")

        thumb = client.get(f"/api/images/{cat[0]['id']}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert client.get(f"/api/images/{cat[0]['id']}/thumbnail",
                          headers={"If-None-Match": thumb.headers["etag"]}).status_code == 304

        assert client.get("/api/search", params={"q": ""}).status_code == 400
        assert client.get("/api/images/987654/file").status_code == 404

        (sample_album / "new").mkdir()
        (sample_album / "new" / "horse.png").write_bytes((skimage_data_dir() / "horse.png").read_bytes())
        refresh = client.post("/api/index/refresh")
        assert refresh.status_code == 202
        wait_indexed(client, len(SAMPLE_PHOTOS) + 1)

        assert client.get("/").status_code == 200  # the web client (web/) at /
        assert "/api/search" in client.get("/schema/openapi.json").json()["paths"]


def test_demo_assembles_indexes_and_serves_the_sample_album(tmp_path: Path, default_bundle: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    args = ["demo", "--port", str(port), "--data-dir", str(data)]
    with running(args, port, tmp_path / "demo.log", env={"CLIPALBUM_MODEL": str(default_bundle)}) as client:
        status = client.get("/api/status").json()  # the demo indexes before it serves
        assert status["indexed"] >= 10 and status["roots"] == [str((data / "sample-album").resolve())]
        cat = client.get("/api/search", params={"q": "a cat", "k": 3}).json()["results"]
        assert cat[0]["path"] == "pets/chelsea.png", cat
    log = (tmp_path / "demo.log").read_text()
    assert f"http://localhost:{port}/" in log


def test_health_answers_only_once_the_index_is_loaded(tmp_path: Path, tiny_bundle: Path) -> None:
    """A server whose index takes 4 s to open: the port stays closed (no /health) until it is open, and the
    first /health it gives comes with the index loaded."""
    port = free_port()
    data = tmp_path / "data"
    probe = (
        "import sys, time\n"
        "from clipalbum.server import library\n"
        "real = library.Library._load_ann\n"
        "def slow(self):\n"
        "    time.sleep(4)\n"
        "    real(self)\n"
        "library.Library._load_ann = slow\n"
        "from clipalbum.server.cli import main\n"
        f"sys.exit(main(['serve', '--data-dir', {str(data)!r}, '--model', {str(tiny_bundle)!r}, '--port', '{port}']))\n"
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", probe], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        refused_while_loading = 0
        while time.monotonic() - started < 3:  # inside the 4 s the index takes to open
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            refused_while_loading += 1
            time.sleep(0.3)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
        assert health.status_code == 200 and time.monotonic() - started >= 4
        assert refused_while_loading >= 5
        assert health.json()["model_id"] == "tiny-test"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
