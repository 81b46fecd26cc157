"""The fault suite: kill -9 at random (seeded) points of `index` and `serve` runs, a full disk, a read-only
data directory and an album that disappears mid-scan. After each, a rerun must leave a sound index:
every photo once, nothing orphaned, the ANN index equal to SQLite, `PRAGMA integrity_check` ok and the
album untouched (faulttools.assert_sound_index)."""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clipalbum.server import scanner
from clipalbum.server.cli import main as cli_main
from clipalbum.server.settings import data_paths
from clipalbum.server.store import Store
from tests.albumtools import snapshot, write_variants
from tests.conftest import REPO, SAMPLE_PHOTOS, skimage_data_dir
from tests.faulttools import (assert_sound_index, generation, index_command, kill_when, photo_count, run_to_end,
                              start)
from tests.test_server_loopback import free_port
from tests.tinybundle import make_tiny_bundle

pytestmark = pytest.mark.slow

SEED = 8  # the kill points and album changes are random but reproducible
INDEX_KILLS = 12
SERVE_KILLS = 8
WORDS = ["a cat", "a rocket", "coffee", "an astronaut", "galaxies", "a motorcycle", "printed text", "a retina"]


@pytest.fixture(scope="module")
def bundle224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random real bundle with a 224 px input, so decoding costs what it does with a real model and a
    scan lasts long enough to be killed mid-way."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny224", size=224)


def reorganise(rng: random.Random, album: Path, round_no: int, new: int) -> None:
    """Work for the next scan, as people make it: `new` new photos, a few deleted, one moved, sometimes a
    folder renamed. The crop size differs per round, so new photos never share bytes with earlier ones."""
    names = list(SAMPLE_PHOTOS)
    write_variants(skimage_data_dir(), names, album / f"round{round_no:02d}", new, side=150 + round_no)
    existing = sorted(album.rglob("*.jpg"))
    for path in rng.sample(existing, min(4, len(existing) // 10)):
        path.unlink()
    mover = rng.choice(sorted(album.rglob("*.jpg")))
    mover.rename(album / f"moved-{round_no:02d}-{mover.name}")
    folders = sorted(p for p in album.iterdir() if p.is_dir())
    if round_no % 3 == 2 and folders:
        folder = rng.choice(folders)
        folder.rename(album / f"{folder.name}-renamed{round_no:02d}")


def kill_point(rng: random.Random, database: Path, commits: int) -> tuple[str, Callable[[], bool]]:
    """When to kill: a random moment after the start (start-up, planning, the first batches), or right after
    a random one of the run's batch commits (between SQLite and the ANN file, or mid-scan)."""
    if rng.random() < 0.35:
        delay = rng.uniform(0.0, 2.5)
        started = time.monotonic()
        return f"{delay:.2f} s after start", lambda: time.monotonic() - started >= delay
    target = generation(database) + rng.randint(1, max(1, commits))
    return f"at commit {target}", lambda: generation(database) >= target


def test_kill_9_at_random_points_of_index_runs(tmp_path: Path, bundle224: Path) -> None:
    rng = random.Random(SEED)
    album, data = tmp_path / "album", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 200, side=256)
    database = data_paths(data).database
    command = index_command(album, data, bundle224)
    landed: list[str] = []
    for round_no in range(3 * INDEX_KILLS):
        if len(landed) == INDEX_KILLS:
            break
        if round_no:
            reorganise(rng, album, round_no, new=rng.randint(40, 90))
        if round_no == 5:  # a damaged vector file, as a crash mid-write on another filesystem might leave
            ann_file = data_paths(data).ann_index
            ann_file.write_bytes(ann_file.read_bytes()[: ann_file.stat().st_size // 2])
        before = snapshot(album)
        where, ready = kill_point(rng, database, commits=2 if round_no else 5)
        proc = start(command)
        if kill_when(proc, ready):
            landed.append(where)
        run_to_end(command)
        assert_sound_index(data, bundle224, album, before)
    print(f"index kills ({round_no + 1} runs): {landed}")
    assert len(landed) == INDEX_KILLS, landed


@contextmanager
def serving(album: Path, data: Path, bundle: Path, log_file: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`clipalbum serve` scanning `album` in the background (no periodic rescans); killed at the end."""
    port = free_port()
    proc = start([sys.executable, "-m", "clipalbum.server.cli", "serve", "--album", str(album), "--data-dir", str(data),
                  "--model", str(bundle), "--port", str(port), "--rescan-minutes", "0"], log_file=log_file)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_health(proc: subprocess.Popen, base: str, log_file: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_file.read_text(errors="replace")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no /health in {timeout} s: {log_file.read_text(errors='replace')}")


def small_jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), ((seed * 40) % 256, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


def query_until_dead(base: str, statuses: list[tuple[str, int]], stop: threading.Event) -> None:
    """Text, similar, thumbnail, status and upload requests until the server dies; records (kind, status)."""
    rng = random.Random(SEED)
    with httpx.Client(base_url=base, timeout=30) as client:
        ids: list[int] = []
        while not stop.is_set():
            try:
                kind = rng.choice(["search", "similar", "thumbnail", "status", "upload"])
                if kind == "search" or not ids:
                    kind = "search"
                    r = client.get("/api/search", params={"q": rng.choice(WORDS), "k": 10})
                    if r.status_code == 200:
                        ids = [hit["id"] for hit in r.json()["results"]] or ids
                elif kind == "similar":
                    r = client.get(f"/api/images/{rng.choice(ids)}/similar", params={"k": 5})
                elif kind == "thumbnail":
                    r = client.get(f"/api/images/{rng.choice(ids)}/thumbnail", params={"size": 128})
                elif kind == "status":
                    r = client.get("/api/status")
                else:
                    r = client.post("/api/search/image", files={"file": ("q.jpg", small_jpeg(len(statuses)),
                                                                          "image/jpeg")})
                statuses.append((kind, r.status_code))
            except httpx.TransportError:  # killed (or not up yet)
                if stop.wait(0.02):
                    return


def test_kill_9_at_random_points_of_serve_runs(tmp_path: Path, bundle224: Path) -> None:
    """Half the kills land while the background scan runs, half while the server also answers queries
    (and a requested rescan runs); the server must never answer 5xx before the kill."""
    rng = random.Random(SEED + 1)
    album, data = tmp_path / "album", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 120, side=256)
    database = data_paths(data).database
    landed: list[str] = []
    answered = 0
    for round_no in range(3 * SERVE_KILLS):
        if len(landed) == SERVE_KILLS:
            break
        reorganise(rng, album, round_no + 50, new=rng.randint(60, 100))
        querying = round_no % 2 == 1
        statuses: list[tuple[str, int]] = []
        log_file = tmp_path / f"serve{round_no}.log"
        before = snapshot(album)
        with serving(album, data, bundle224, log_file) as (proc, base):
            if querying:
                wait_health(proc, base, log_file)
                stop = threading.Event()
                client = threading.Thread(target=query_until_dead, args=(base, statuses, stop))
                client.start()
                write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album / f"live{round_no:02d}", 40,
                               side=140 + round_no)
                before = snapshot(album)
                httpx.post(f"{base}/api/index/refresh", timeout=30).raise_for_status()
                delay = rng.uniform(0.2, 2.0)
                started = time.monotonic()
                where, ready = f"{delay:.2f} s into queries", lambda: time.monotonic() - started >= delay
            else:
                where, ready = kill_point(rng, database, commits=2)
            killed = kill_when(proc, ready)
            if querying:
                stop.set()
                client.join()
        if killed:
            landed.append(where)
        server_errors = [s for s in statuses if s[1] >= 500]
        assert not server_errors, (server_errors[:5], log_file.read_text(errors="replace")[-3000:])
        run_to_end(index_command(album, data, bundle224))  # the kill may have come before serve added it
        assert_sound_index(data, bundle224, album, before)
        answered += len(statuses)
    print(f"serve kills ({round_no + 1} runs, {answered} responses before the kills): {landed}")
    assert len(landed) == SERVE_KILLS, landed
    assert answered > 0  # the query rounds did query


# -- a full disk ----------------------------------------------------------------------------------------------


@contextmanager
def mounted(target: Path, *mount_args: str) -> Iterator[None]:
    """`mount ARGS TARGET` for the block, or a skip saying why (not root, or no mounts in this sandbox)."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *mount_args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip() or done.returncode}); "
                    "the injected-ENOSPC test covers the same paths")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill_disk(folder: Path, leave: int) -> Path:
    """Writes a filler file until the filesystem has `leave` bytes free; removing it gives the space back."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        f.truncate(max(0, f.tell() - leave))
    return filler


def run_cli(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_disk_full_mid_index_is_a_clear_error_then_a_rerun_completes(tmp_path: Path, tiny_bundle: Path) -> None:
    album, data = tmp_path / "album", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 60, side=160)
    with mounted(data, "-t", "tmpfs", "-o", "size=8m", "tmpfs"):
        run_to_end(index_command(album, data, tiny_bundle))
        write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album / "more", 400, side=150)
        before = snapshot(album)
        filler = fill_disk(data, leave=160 * 1024)  # room for a few batches, not for 400 photos

        full = run_cli(index_command(album, data, tiny_bundle))
        assert full.returncode == 2, full.stderr
        assert "Traceback" not in full.stderr and "no space left on the disk" in full.stderr, full.stderr
        assert photo_count(data_paths(data).database) > 60  # it ran out mid-scan, not at the start
        status = run_cli([sys.executable, "-m", "clipalbum.server.cli", "status", "--data-dir", str(data),
                          "--model", str(tiny_bundle)])  # answers, or says why not (SQLite needs a little room)
        assert "Traceback" not in status.stderr, status.stderr
        assert status.returncode == 0 or "no space left on the disk" in status.stderr, status.stderr

        filler.unlink()
        run_to_end(index_command(album, data, tiny_bundle))
        assert_sound_index(data, tiny_bundle, album, before)


def test_disk_full_under_a_running_server_shows_in_status_and_a_rescan_recovers(tmp_path: Path,
                                                                                tiny_bundle: Path) -> None:
    album, data = tmp_path / "album", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 60, side=160)
    log_file = tmp_path / "serve.log"
    with mounted(data, "-t", "tmpfs", "-o", "size=8m", "tmpfs"), \
            serving(album, data, tiny_bundle, log_file) as (proc, base):
        wait_health(proc, base, log_file)
        with httpx.Client(base_url=base, timeout=30) as client:
            wait_scan(client, lambda status: status["indexed"] == 60)
            write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album / "more", 400, side=150)
            before = snapshot(album)
            filler = fill_disk(data, leave=160 * 1024)
            client.post("/api/index/refresh").raise_for_status()
            stopped = wait_scan(client, lambda status: status["progress"]["phase"] == "error")
            assert "no space left on the disk" in stopped["progress"]["message"], stopped["progress"]
            assert client.get("/api/search", params={"q": "a cat"}).status_code == 200  # still answers

            filler.unlink()
            client.post("/api/index/refresh").raise_for_status()
            wait_scan(client, lambda status: status["indexed"] == 460)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_file.read_text(errors="replace")
        assert "Traceback" not in log_file.read_text(errors="replace")
        assert_sound_index(data, tiny_bundle, album, before)


def wait_scan(client: httpx.Client, done: Callable[[dict], bool], timeout: float = 120) -> dict:
    """Polls /api/status until no scan runs and `done(status)` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/api/status").json()
        if not status["progress"]["running"] and done(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"status never got there: {status}")


def test_injected_enospc_mid_index_then_a_rerun_completes(tmp_path: Path, tiny_bundle: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """The same without a mount: the third batch's commit fails as SQLite fails on a full disk."""
    album, data = tmp_path / "album", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 150, side=120)
    args = ["index", str(album), "--data-dir", str(data), "--model", str(tiny_bundle), "-q"]
    apply, calls = Store.apply, []

    def apply_until_full(self: Store, changes):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) >= 3:
            raise sqlite3.OperationalError("database or disk is full")
        return apply(self, changes)

    monkeypatch.setattr(Store, "apply", apply_until_full)
    assert cli_main(args) == 2
    assert "no space left on the disk" in capsys.readouterr().err
    assert 0 < photo_count(data_paths(data).database) < 150
    monkeypatch.setattr(Store, "apply", apply)
    assert cli_main(args) == 0
    assert_sound_index(data, tiny_bundle, album)


# -- a read-only data directory -------------------------------------------------------------------------------


@contextmanager
def read_only(data: Path, view: Path) -> Iterator[Path]:
    """`data` as a read-only directory: a read-only bind mount as root (for whom modes don't stop writes),
    else the folder's mode; yields the path to use."""
    if os.geteuid() != 0:
        data.chmod(0o555)
        try:
            yield data
        finally:
            data.chmod(0o755)
        return
    with mounted(view, "--bind", str(data)):
        done = subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
        yield view


def test_read_only_data_directory_is_a_clear_error_and_loses_nothing(tmp_path: Path, tiny_bundle: Path) -> None:
    album, data = tmp_path / "album", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 40, side=120)
    run_to_end(index_command(album, data, tiny_bundle))
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album / "more", 20, side=110)  # work to refuse
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir() if p.is_file()}
    with read_only(data, tmp_path / "ro-view") as where:
        for command in (index_command(album, where, tiny_bundle),
                        [sys.executable, "-m", "clipalbum.server.cli", "serve", "--data-dir", str(where), "--model",
                         str(tiny_bundle), "--port", str(free_port())]):
            refused = run_cli(command)
            assert refused.returncode == 2, refused.stderr
            assert "Traceback" not in refused.stderr, refused.stderr
            assert "the data directory is read-only" in refused.stderr, refused.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir() if p.is_file()} == files
    run_to_end(index_command(album, data, tiny_bundle))
    assert_sound_index(data, tiny_bundle, album)


# -- an album that disappears mid-scan ------------------------------------------------------------------------


def test_album_unplugged_mid_scan_keeps_its_photos_and_a_rerun_reconciles(tmp_path: Path,
                                                                           bundle224: Path) -> None:
    album, away, data = tmp_path / "album", tmp_path / "album-unplugged", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 100, side=200)
    command = index_command(album, data, bundle224)
    run_to_end(command)
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album / "new", 150, side=230)
    before = snapshot(album)
    database = data_paths(data).database
    target = generation(database) + 1

    proc = start(command)
    reached = kill_when_or_act(proc, lambda: generation(database) >= target, lambda: album.rename(away))
    assert reached, "the scan ended before the album could be unplugged"
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-3000:]
    rows = dict(sqlite3.connect(database).execute("SELECT rel_path, status FROM photos").fetchall())
    assert sum(1 for rel in rows if not rel.startswith("new/")) == 100  # the old photos stayed
    assert "failed" not in rows.values()  # a vanished file is not a broken photo

    away.rename(album)
    run_to_end(command)
    assert_sound_index(data, bundle224, album, before)


def kill_when_or_act(proc: subprocess.Popen, ready: Callable[[], bool], act: Callable[[], None],
                     timeout: float = 120) -> bool:
    """Runs `act()` once `ready()` holds while `proc` still runs; False when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            act()
            return True
        time.sleep(0.002)
    return False


def test_album_unplugged_mid_walk_keeps_the_photos_not_yet_listed(tmp_path: Path, tiny_bundle: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The drive goes away while the scan lists its folders: the folders not yet listed are not "deleted"."""
    album, away, data = tmp_path / "album", tmp_path / "album-unplugged", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 200, side=120)
    args = ["index", str(album), "--data-dir", str(data), "--model", str(tiny_bundle), "-q"]
    assert cli_main(args) == 0
    files = scanner.AlbumWalk.files

    def files_then_unplug(self: scanner.AlbumWalk, roots: list[tuple[int, Path]]):  # noqa: ANN202
        for i, found in enumerate(files(self, roots)):
            if i == 60:
                album.rename(away)
            yield found

    monkeypatch.setattr(scanner.AlbumWalk, "files", files_then_unplug)
    assert cli_main(args[:1] + args[2:]) == 0
    assert not album.exists()  # the walk did reach the unplugging point
    assert photo_count(data_paths(data).database) == 200
    monkeypatch.setattr(scanner.AlbumWalk, "files", files)
    away.rename(album)
    assert cli_main(args) == 0
    assert_sound_index(data, tiny_bundle, album)


# -- many clients -----------------------------------------------------------------------------------------


def test_a_kept_alive_connection_idle_for_a_while_is_still_served(tmp_path: Path, tiny_bundle: Path) -> None:
    """uvicorn's default keep-alive (5 s) closed idle connections just as busy clients reused them: 5 of
    2,330 requests in bench/load_mixed.py failed with a connection reset. The server keeps them longer."""
    album, log_file = tmp_path / "album", tmp_path / "serve.log"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 4, side=64)
    with serving(album, tmp_path / "data", tiny_bundle, log_file) as (proc, base):
        wait_health(proc, base, log_file)
        port = int(base.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for idle in (0.0, 6.5):  # the second time past uvicorn's default of 5 s
                time.sleep(idle)
                connection.request("GET", "/health")
                response = connection.getresponse()  # RemoteDisconnected when the server closed it
                assert response.status == 200 and response.read()
        finally:
            connection.close()


def test_sigterm_mid_scan_stops_within_seconds_keeps_the_work_and_the_next_start_goes_on(
        tmp_path: Path, bundle224: Path) -> None:
    from clipalbum.server.app import STOP_TIMEOUT_S

    album, data = tmp_path / "album", tmp_path / "data"
    write_variants(skimage_data_dir(), list(SAMPLE_PHOTOS), album, 1500, side=480)
    before = snapshot(album)
    log_file = tmp_path / "serve.log"
    with serving(album, data, bundle224, log_file) as (proc, base):
        wait_health(proc, base, log_file)
        deadline = time.monotonic() + 120
        while True:
            progress = httpx.get(f"{base}/api/status", timeout=30).json()["progress"]
            if progress["phase"] == "embedding" and progress["done"] >= 100:
                break
            assert progress["phase"] != "done" and time.monotonic() < deadline, progress  # still scanning
            time.sleep(0.05)
        assert progress["done"] < progress["total"] - 300, progress  # far from the end
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_file.read_text(errors="replace")
        took = time.monotonic() - sent
    log = log_file.read_text(errors="replace")
    # The scan stopped itself (the server did not give up waiting for it), so the index was closed cleanly.
    assert "still running after" not in log and "Traceback" not in log, log
    assert took < STOP_TIMEOUT_S, f"{took:.1f} s from SIGTERM to exit"
    kept = photo_count(data_paths(data).database)
    assert 100 <= kept < 1500, kept  # what it embedded before the signal is kept
    with serving(album, data, bundle224, tmp_path / "serve2.log") as (proc, base):
        wait_health(proc, base, tmp_path / "serve2.log")
        with httpx.Client(base_url=base, timeout=30) as client:
            wait_scan(client, lambda status: status["indexed"] == 1500, timeout=300)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert_sound_index(data, bundle224, album, before)
