"""Browser-test fixtures: a real `clipalbum serve` on loopback over a real album, and Debian's Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, SAMPLE_PHOTOS, skimage_data_dir

CHROMIUM = Path(os.environ.get("CLIPALBUM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT_S = 180.0  # loading the model and the first scan, on a busy 2-core CI machine

# EXIF capture dates given to the sample photos (retina keeps none: undated photos must still be found).
CAPTURE_DATES = {
    "chelsea.png": "2019:06:15 10:30:00",
    "coffee.png": "2021:03:02 08:05:00",
    "astronaut.png": "2016:11:20 14:00:00",
    "rocket.jpg": "2022:07:04 21:45:00",
    "motorcycle_left.png": "2018:05:09 17:20:00",
    "hubble_deep_field.jpg": "2020:01:30 23:59:00",
    "page.png": "2023:09:12 09:00:00",
}
EXIF_IFD, DATETIME_ORIGINAL = 0x8769, 0x9003
CORRUPT_NAME = "broken.jpg"
NEAR_DUPLICATE = "chelsea-again.jpg"  # the cat photo mirrored and cropped: what "more like this" must find first
UNDATED = ("retina.jpg", NEAR_DUPLICATE)


def photo_name(source_name: str) -> str:
    """The album's file name for a sample photo (dated copies are JPEGs, since EXIF lives there)."""
    return Path(source_name).stem + ".jpg"


def write_dated_jpeg(source: Path, target: Path, taken: str | None) -> None:
    with Image.open(source) as img:
        exif = Image.Exif()
        if taken:
            exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = taken
        img.convert("RGB").save(target, "JPEG", quality=92, exif=exif.tobytes())


def make_album(album: Path, corrupt: bool = True) -> Path:
    """The sample album (scikit-image's photos, nested as in tests/conftest.py), as JPEGs with EXIF dates,
    a near-duplicate of the cat photo, and one corrupt .jpg that the index must list as failed."""
    source = skimage_data_dir()
    for i, name in enumerate(SAMPLE_PHOTOS):
        folder = album / ("2023" if i % 2 else "2024/summer")
        folder.mkdir(parents=True, exist_ok=True)
        write_dated_jpeg(source / name, folder / photo_name(name), CAPTURE_DATES.get(name))
    with Image.open(source / "chelsea.png") as img:
        mirrored = img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mirrored.crop((20, 10, mirrored.width - 30, mirrored.height - 15)).save(album / "2024" / NEAR_DUPLICATE)
    if corrupt:
        (album / CORRUPT_NAME).write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return album


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return json.loads(response.read())


@dataclass
class RunningServer:
    url: str
    album: Path
    data_dir: Path
    process: subprocess.Popen
    log: Path
    token: str | None = None  # the access token, for a server bound beyond loopback

    def status(self) -> dict:
        return get_json(f"{self.url}/api/status", self.token)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_idle(self, timeout: float = SERVER_START_TIMEOUT_S) -> dict:
        """Waits until no scan runs and at least one has finished; returns the status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            progress = status["progress"]
            if not progress["running"] and progress["finished_at"] is not None:
                return status
            time.sleep(0.2)
        raise AssertionError(f"the server's scan did not finish in {timeout} s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(album: Path, data_dir: Path, bundle: Path, wait_for_scan: bool = True,
                 host: str = "127.0.0.1") -> RunningServer:
    """Runs `clipalbum serve` in a subprocess on a free port and waits until it answers on 127.0.0.1.

    Bound beyond loopback (host="0.0.0.0"), the server's access token is read from the data directory."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}-server.log"
    command = [sys.executable, "-m", "clipalbum.server.cli", "serve", "--album", str(album), "--data-dir", str(data_dir),
               "--model", str(bundle), "--host", host, "--port", str(port), "--rescan-minutes", "0"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    server = RunningServer(f"http://127.0.0.1:{port}", album, data_dir, process, log)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise AssertionError(f"clipalbum serve exited with {process.returncode}; log:\n{server.log_tail()}")
        try:
            get_json(f"{server.url}/health")
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"clipalbum serve did not answer in time; log:\n{server.log_tail()}")
            time.sleep(0.2)
    if (data_dir / "token").is_file():
        server.token = (data_dir / "token").read_text().strip()
    if wait_for_scan:
        server.wait_idle()
    return server


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium, or set CLIPALBUM_CHROMIUM)")
    pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_executable: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(chromium_executable), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def album_server(tmp_path_factory: pytest.TempPathFactory, default_bundle: Path,
                 chromium_executable: Path) -> Iterator[RunningServer]:
    """One server over the dated sample album (plus a corrupt file), indexed with the real default model."""
    root = tmp_path_factory.mktemp("web-album")
    server = start_server(make_album(root / "album"), root / "data", default_bundle)
    yield server
    server.stop()


@pytest.fixture()
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh page (own cookies and cache) that fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(30_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def copy_source_photo(name: str, target_dir: Path) -> Path:
    """A sample photo's original file, outside the album (for uploads)."""
    target = target_dir / name
    shutil.copy2(skimage_data_dir() / name, target)
    return target
