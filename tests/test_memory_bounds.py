"""Memory bounds on decoding: the pixel limit read from the header, one decode budget for the process, a
bounded number of upload decodes, and a scanner that reads no more of a file than it needs to decide."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import struct
import threading
import zlib
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from litestar.testing import TestClient
from PIL import Image

import clipalbum.server.library as library_module
import clipalbum.server.preprocess as preprocess
import clipalbum.server.scanner as scanner
from clipalbum.server.decode_budget import DecodeBudget
from clipalbum.server.errors import ImageDecodeError, ServerBusyError
from clipalbum.server.library import Library
from clipalbum.server.preprocess import MAX_PIXELS, decode_photo
from clipalbum.server.settings import data_paths
from clipalbum.server.upload_gate import UploadGate
from tests.conftest import eventually, skimage_data_dir

T = TypeVar("T")


def run_in_own_loop(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a thread of its own: the browser tests' Playwright keeps a loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (1-bit grey) with one tiny IDAT: Image.open takes it, pixels
    are never there. Refusing it costs nothing, so bombs of any size can be tested."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def flat_png(width: int, height: int, mode: str = "1") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()



class TestPixelLimit:
    """The project's guard decides, at exactly MAX_PIXELS, with its own message (not PIL's 89.5 MP warning)."""

    def test_a_95_mp_photo_decodes(self) -> None:
        photo = decode_photo(flat_png(10_000, 9_500), min_side=224)
        assert (photo.width, photo.height) == (10_000, 9_500)
        assert min(photo.image.size) >= 224 and photo.image.mode == "RGB"

    @pytest.mark.parametrize("width, height, message", [
        (10_100, 10_000, "10100x10000 is 101 MP, over the 100 MP limit"),
        (15_000, 15_000, "15000x15000 is 225 MP, over the 100 MP limit"),  # PIL warns first: not fatal
        (30_000, 30_000, "900 MP, over the 100 MP limit"),  # PIL's own backstop refuses it, in our words
    ])
    @pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's, above 200 MP
    def test_over_100_mp_is_refused_by_the_projects_guard(self, width: int, height: int, message: str) -> None:
        with pytest.raises(ImageDecodeError, match=message):
            decode_photo(png_header(width, height))

    def test_exactly_the_limit_passes_the_guard(self) -> None:
        side = int(MAX_PIXELS ** 0.5)
        assert side * side == MAX_PIXELS
        # The header passes the guard; the missing pixels then make it unreadable, not "over the limit".
        with pytest.raises(ImageDecodeError, match="unreadable"):
            decode_photo(png_header(side, side))

    def test_pils_own_check_sits_above_the_project_limit(self) -> None:
        assert Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS >= MAX_PIXELS


def test_only_the_preprocessing_module_opens_images() -> None:
    """Every photo the project reads goes through server.preprocess: one pixel limit, one decode budget."""
    repo = Path(__file__).resolve().parents[1]
    offenders = [str(path.relative_to(repo)) for folder in ("server", "training", "export")
                 for path in sorted((repo / folder).rglob("*.py"))
                 if path != repo / "server" / "preprocess.py" and "Image.open(" in path.read_text()]
    assert offenders == [], "open photos with server.preprocess.open_photo / decode_photo"


class TestDecodeBudget:
    def test_a_second_reservation_waits_until_the_first_is_released(self) -> None:
        budget = DecodeBudget(100)
        got_second = threading.Event()

        def second() -> None:
            with budget.reserve(60):
                got_second.set()

        with budget.reserve(60):
            waiter = threading.Thread(target=second)
            waiter.start()
            assert eventually(lambda: budget.waiting == 1)
            assert not got_second.is_set() and budget.used == 60
        waiter.join(10)
        assert got_second.is_set() and budget.used == 0

    def test_with_no_time_to_wait_a_full_budget_says_busy(self) -> None:
        budget = DecodeBudget(100)
        with budget.reserve(80):
            with pytest.raises(ServerBusyError):
                with budget.reserve(30, timeout=0):
                    pass
            with budget.reserve(20, timeout=0):  # what fits goes ahead
                assert budget.used == 100
        assert budget.used == 0

    def test_one_oversized_image_alone_takes_the_whole_budget(self) -> None:
        budget = DecodeBudget(100)
        with budget.reserve(10_000, timeout=0):
            assert budget.used == 100
        assert budget.used == 0

    def test_waiters_are_served_in_order(self) -> None:
        budget = DecodeBudget(100)
        order: list[str] = []
        threads = []
        with budget.reserve(100):
            for name, size in (("big", 90), ("small", 10)):
                def take(name: str = name, size: int = size) -> None:
                    with budget.reserve(size):
                        order.append(name)
                threads.append(threading.Thread(target=take))
                threads[-1].start()
                assert eventually(lambda n=len(threads): budget.waiting == n)
        for t in threads:
            t.join(10)
        assert order == ["big", "small"]  # the small one did not overtake (no starving big photos)

    def test_every_decode_reserves_from_the_process_budget(self, monkeypatch: pytest.MonkeyPatch) -> None:
        budget = DecodeBudget(50_000_000)
        monkeypatch.setattr(preprocess, "DECODE_BUDGET", budget)
        data = flat_png(4000, 3000, "L")
        with budget.reserve(50_000_000):
            with pytest.raises(ServerBusyError):
                decode_photo(data, wait=0)
        seen: list[int] = []
        reserve = budget.reserve
        monkeypatch.setattr(budget, "reserve", lambda n, timeout=None: (seen.append(n), reserve(n, timeout))[1])
        decode_photo(data)
        assert seen and 12_000_000 <= seen[0] <= 50_000_000  # the 12 MB of grey pixels, and the copies after


@pytest.fixture()
def library(tmp_path: Path, tiny_bundle: Path) -> Iterator[Library]:
    album = tmp_path / "album"
    album.mkdir()
    lib = Library.open(data_paths(tmp_path / "data"), model=tiny_bundle, roots=[str(album)])
    yield lib
    lib.close()


class TestUploads:
    def test_uploads_beyond_the_decode_slots_are_refused_not_decoded_at_once(
            self, library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
        # The API's UploadGate is the one bound on uploads decoding at once (the Library has none of its own).
        from clipalbum.server.api import UPLOAD_GATE
        from clipalbum.server.app import create_app

        monkeypatch.setattr(UPLOAD_GATE, "wait_s", 0.0)
        release = threading.Event()
        lock = threading.Lock()
        running, most = [0], [0]
        real_load = library_module.load_model_input

        def counting_load(source, spec, wait=None):  # type: ignore[no-untyped-def]
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            release.wait(30)
            try:
                return real_load(source, spec, wait=wait)
            finally:
                with lock:
                    running[0] -= 1

        monkeypatch.setattr(library_module, "load_model_input", counting_load)
        photo = (skimage_data_dir() / "coffee.png").read_bytes()
        outcomes: list[int] = []
        app = create_app(library, web_dir=library.paths.root / "no-web", background_index=False)
        with TestClient(app) as client:
            def upload() -> None:
                response = client.post("/api/search/image", params={"k": 1},
                                       files={"file": ("coffee.png", photo, "image/png")})
                outcomes.append(response.status_code)

            threads = [threading.Thread(target=upload) for _ in range(16)]
            for t in threads:
                t.start()
            assert eventually(lambda: len(outcomes) == 16 - UPLOAD_GATE.slots)
            release.set()
            for t in threads:
                t.join(30)
        assert most[0] == UPLOAD_GATE.slots < 16
        assert sorted(outcomes) == [200] * most[0] + [503] * (16 - most[0])

    def test_an_upload_is_read_from_its_file_without_a_copy_in_bytes(self, library: Library) -> None:
        photo = (skimage_data_dir() / "coffee.png").read_bytes()
        by_bytes = library.search_image(photo, k=1)
        by_file = library.search_image(io.BytesIO(photo), k=1)
        assert by_bytes.results == by_file.results


async def until(condition: Callable[[], bool]) -> None:
    """Lets the event loop run until `condition` holds (bounded: it orders tasks, it times nothing)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


class TestUploadGate:
    def test_a_few_decode_the_next_wait_and_the_rest_are_refused_at_once(self) -> None:
        async def scenario() -> None:
            gate = UploadGate(slots=1, queue=1, wait_s=60)
            release = threading.Event()
            entered: list[str] = []

            def decode(name: str) -> str:
                entered.append(name)
                release.wait(30)
                return name

            first = asyncio.create_task(gate.run(lambda: decode("first")))
            await until(lambda: entered == ["first"])
            second = asyncio.create_task(gate.run(lambda: decode("second")))
            await until(lambda: gate.admitted == 2)
            with pytest.raises(ServerBusyError, match="try again"):
                await gate.run(lambda: decode("third"))
            assert entered == ["first"]  # the second waits its turn
            release.set()
            assert await asyncio.gather(first, second) == ["first", "second"]
            assert gate.admitted == 0

        run_in_own_loop(scenario())

    def test_a_wait_that_runs_out_says_busy(self) -> None:
        async def scenario() -> None:
            gate = UploadGate(slots=1, queue=4, wait_s=0)
            release = threading.Event()
            first = asyncio.create_task(gate.run(lambda: release.wait(30)))
            await until(lambda: gate.admitted == 1)
            with pytest.raises(ServerBusyError):
                await gate.run(lambda: True)
            release.set()
            await first
            assert gate.admitted == 0 and await gate.run(lambda: "free again") == "free again"

        run_in_own_loop(scenario())

    def test_decodes_run_on_low_priority_threads_of_their_own(self) -> None:
        gate = UploadGate(slots=2, queue=0, wait_s=0)
        name, nice = run_in_own_loop(gate.run(lambda: (threading.current_thread().name,
                                                   os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))))
        assert name.startswith("upload-decode") and nice >= os.getpriority(os.PRIO_PROCESS, 0) + 1


class CountingFile(io.FileIO):
    """A raw file that counts the bytes read from it."""

    total = 0

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        n = super().readinto(buffer)
        CountingFile.total += n or 0
        return n

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        CountingFile.total += len(data)
        return data

    def readall(self) -> bytes:
        data = super().readall()
        CountingFile.total += len(data)
        return data


class TestScannerReads:
    @pytest.fixture()
    def counted(self, monkeypatch: pytest.MonkeyPatch) -> type[CountingFile]:
        CountingFile.total = 0
        monkeypatch.setattr(scanner, "open", lambda path, mode="rb": io.BufferedReader(CountingFile(path)),
                            raising=False)
        return CountingFile

    def test_a_1_gb_junk_jpg_is_refused_after_its_header(self, library: Library, counted: type[CountingFile]) -> None:
        junk = library.roots[0] / "junk.jpg"
        with open(junk, "wb") as f:
            f.write(b"this is not a photo at all")
            f.truncate(1 << 30)  # sparse: costs no disk
        summary = library.index()
        assert summary.failed == 1
        assert "not a supported image" in library.status().errors[0].error
        assert counted.total < 4 << 20

    def test_a_photo_keeps_the_sha256_of_its_bytes(self, library: Library, counted: type[CountingFile]) -> None:
        photo = library.roots[0] / "coffee.png"
        photo.write_bytes((skimage_data_dir() / "coffee.png").read_bytes())
        assert library.index().added == 1
        record = library.photo(1)
        assert record.content_hash == hashlib.sha256(photo.read_bytes()).hexdigest()
        assert record.status == "indexed"
