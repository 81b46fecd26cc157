"""Enhancement over the API, against a real server on loopback with the packaged enhancer: the job lifecycle,
results that are better photos, previews, uploads, cancelling, a full queue and bad input."""

from __future__ import annotations

import hashlib
import io
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from clipalbum.server.enhance.api import enhance_jobs
from clipalbum.server.enhance.cases import degrade_case
from clipalbum.server.enhance.color import kelvin_log_gains
from clipalbum.server.enhance.evaluate import psnr
from clipalbum.server.enhance.jobs import EnhanceJobs, JobRequest, jobs_folder
from clipalbum.server.enhance.manifest import PACKAGED_ENHANCER
from clipalbum.server.enhance.runtime import Enhancer
from clipalbum.server.errors import ImageDecodeError, NotFoundError, ServerBusyError
from clipalbum.server.library import Library
from tests.test_api import make_album, open_indexed
from tests.test_paths import rows, uvicorn_serving

from .conftest import real_photo

pytestmark = pytest.mark.skipif(not (PACKAGED_ENHANCER / "enhancer.json").is_file(),
                                reason="this checkout has no packaged enhancer")

CLEAN = real_photo("astronaut.png")[64:448, 64:448]  # 384 x 384: one tile
JOB_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Library]:
    root = tmp_path_factory.mktemp("enhance-api")
    album = make_album(root / "album")
    Image.fromarray(degrade_case(CLEAN, "combined", seed=3)).save(album / "dim-noisy.png")
    big = Image.fromarray(real_photo("coffee.png")).resize((2048, 1536), Image.Resampling.BICUBIC)
    big.save(album / "big.jpg", quality=90)  # 12 tiles: slow enough to cancel while the UNet runs (denoise 1)
    library = open_indexed(root / "data", tiny_bundle, album)
    yield library
    library.close()


@pytest.fixture(scope="module")
def client(library: Library) -> Iterator[httpx.Client]:
    with uvicorn_serving(library) as client:
        yield client


def photo_id(library: Library, name: str) -> int:
    return next(i for path, i in rows(library).items() if path.endswith(name))


def wait_finished(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def decoded(response: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_an_indexed_photo_comes_back_better_and_the_original_is_untouched(client: httpx.Client,
                                                                          library: Library) -> None:
    original = library.original_path(photo_id(library, "dim-noisy.png"))
    before = hashlib.sha256(original.read_bytes()).hexdigest()
    response = client.post(f"/api/images/{photo_id(library, 'dim-noisy.png')}/enhance", json={})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] in ("queued", "running") and response.headers["location"] == f"/api/jobs/{job['id']}"
    job = wait_finished(client, job["id"])
    assert job["state"] == "done" and job["progress"] == 1.0, job
    assert (job["width"], job["height"]) == (384, 384) and job["applied"]["exposure"] > 0.3  # it was -1 EV
    assert job["applied"]["denoise"] == 1.0  # sigma 15: auto removes all the noise the model finds
    result = client.get(job["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert result.headers["content-disposition"].startswith("attachment") and "dim-noisy-enhanced.png" in \
        result.headers["content-disposition"]
    degraded = np.asarray(Image.open(original).convert("RGB"))
    assert psnr(decoded(result), CLEAN) > psnr(degraded, CLEAN) + 2.0
    assert hashlib.sha256(original.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in original.parent.iterdir() if "enhanced" in p.name) == []


def test_a_preview_is_small_jpeg_and_fixed_values_are_used(client: httpx.Client, library: Library) -> None:
    response = client.post(f"/api/images/{photo_id(library, 'big.jpg')}/enhance",
                           json={"preview": 400, "exposure": 0.5, "contrast": 0.25, "denoise": 0.5,
                                 "temperature": 3000})
    job = wait_finished(client, response.json()["id"])
    assert job["state"] == "done", job
    assert (job["width"], job["height"]) == (400, 300) and job["preview"] == 400
    assert job["applied"]["exposure"] == 0.5 and job["applied"]["contrast"] == 0.25
    # the gains the correction multiplies linear light by (tungsten light: less red, more blue)
    red, blue = (math.exp(v) for v in kelvin_log_gains(3000))
    assert red < 1 < blue
    assert job["applied"]["red_gain"] == pytest.approx(red, abs=1e-4)
    assert job["applied"]["blue_gain"] == pytest.approx(blue, abs=1e-4) and job["applied"]["denoise"] == 0.5
    # on auto, this clean photo gets no noise removal, and the job says so
    clean = wait_finished(client, client.post(f"/api/images/{photo_id(library, 'big.jpg')}/enhance",
                                              json={"preview": 400}).json()["id"])
    assert clean["state"] == "done" and clean["applied"]["denoise"] == 0.0, clean
    result = client.get(job["result_url"])
    assert result.headers["content-type"] == "image/jpeg" and result.headers["content-disposition"].startswith("inline")
    assert decoded(result).shape == (300, 400, 3)


def test_an_uploaded_photo_with_options(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.fromarray(degrade_case(CLEAN, "noise25", seed=1)).save(buffer, format="PNG")
    response = client.post("/api/enhance", files={"file": ("holiday.png", buffer.getvalue(), "image/png")},
                           data={"exposure": "0", "temperature": "6500", "contrast": "0", "format": "jpeg"})
    assert response.status_code == 202, response.text
    job = wait_finished(client, response.json()["id"])
    assert job["state"] == "done" and job["photo_id"] is None and job["name"] == "holiday.png", job
    result = client.get(job["result_url"])
    assert result.headers["content-type"] == "image/jpeg" and "holiday-enhanced.jpg" in result.headers["content-disposition"]
    assert psnr(decoded(result), CLEAN) > psnr(degrade_case(CLEAN, "noise25", seed=1), CLEAN) + 3.0


def test_cancelling_a_running_and_a_queued_job(client: httpx.Client, library: Library) -> None:
    big = photo_id(library, "big.jpg")
    # denoise 1: the photo is clean, so auto would skip the UNet and finish too fast to cancel
    running = client.post(f"/api/images/{big}/enhance", json={"denoise": 1}).json()
    queued = client.post(f"/api/images/{big}/enhance", json={"denoise": 1}).json()
    assert queued["queue_position"] >= 1
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while client.get(f"/api/jobs/{running['id']}").json()["progress"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for job in (queued, running):
        cancelled = client.delete(f"/api/jobs/{job['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
        assert client.get(f"/api/jobs/{job['id']}").status_code == 404  # cancelled jobs are forgotten
        assert client.get(f"/api/jobs/{job['id']}/result").status_code == 404
    # The worker stopped the running job at its next tile: a job asked for now is done long before the
    # 12 tiles of the cancelled one could have been, and nothing of the cancelled ones is left on disk.
    after = wait_finished(client, client.post(f"/api/images/{photo_id(library, 'dim-noisy.png')}/enhance",
                                              json={"preview": 64}).json()["id"])
    assert after["state"] == "done"
    left = [p.name for p in (library.paths.root / "enhance-jobs").rglob("*") if p.is_file()]
    assert not [name for name in left if name.startswith((running["id"], queued["id"]))], left
    # A finished job is forgotten on DELETE: its result goes with it.
    forgotten = client.delete(f"/api/jobs/{after['id']}").json()
    assert forgotten["state"] == "done" and forgotten["result_url"] is None
    assert client.get(f"/api/jobs/{after['id']}").status_code == 404
    assert not [p for p in (library.paths.root / "enhance-jobs").rglob(f"{after['id']}*")]


@pytest.mark.parametrize(("how", "status", "words"), [
    ("not-a-photo", 422, "notes.jpg: not a supported image"),
    ("empty", 400, "empty"),
    ("bad-option", 400, "exposure"),
    ("unknown-option", 400, "bogus"),
])
def test_bad_uploads_are_refused_and_leave_nothing(client: httpx.Client, library: Library, how: str, status: int,
                                                   words: str) -> None:
    photo = io.BytesIO()
    Image.fromarray(CLEAN).save(photo, format="PNG")
    files = {"file": ("notes.jpg", b"" if how == "empty" else b"hello" if how == "not-a-photo" else photo.getvalue())}
    data = {"bad-option": {"exposure": "bright"}, "unknown-option": {"bogus": "1"}}.get(how, {})
    response = client.post("/api/enhance", files=files, data=data)
    assert response.status_code == status and words in response.json()["detail"], response.text
    assert str(library.paths.root) not in response.text  # no server path in what a client reads
    assert not any(p.suffix == ".upload" for p in (library.paths.root / "enhance-jobs").rglob("*"))


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/api/images/999999/enhance", {}, 404),
    ("/api/images/{broken}/enhance", {}, 404),  # the scanner could not read it: not servable
    ("/api/images/{photo}/enhance", {"denoise": 2}, 400),
    ("/api/images/{photo}/enhance", {"steps": 0}, 400),
    ("/api/images/{photo}/enhance", {"preview": 10}, 400),
    ("/api/images/{photo}/enhance", {"prompt": "   "}, 400),
    # The enhancer was trained against another search model than this test's: it cannot follow prompts.
    ("/api/images/{photo}/enhance", {"prompt": "brighter"}, 409),
])
def test_bad_requests_for_an_indexed_photo(client: httpx.Client, library: Library, path: str, body: dict,
                                           status: int) -> None:
    url = path.format(broken=photo_id(library, "broken.jpg"), photo=photo_id(library, "dim-noisy.png"))
    response = client.post(url, json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_unknown_and_malformed_job_ids(client: httpx.Client) -> None:
    assert client.get("/api/jobs/" + "0" * 32).status_code == 404
    assert client.get("/api/jobs/" + "0" * 32 + "/result").status_code == 404
    assert client.delete("/api/jobs/" + "0" * 32).status_code == 404
    assert client.get("/api/jobs/..%2F..%2Fetc").status_code in (400, 404)
    assert client.get("/api/jobs/XYZ").status_code == 400


def test_the_queue_is_bounded_and_close_cleans_up(tmp_path: Path, library: Library) -> None:
    release = threading.Event()

    def slow_load() -> Enhancer:
        release.wait(30)
        return Enhancer(PACKAGED_ENHANCER)

    template = enhance_jobs(library)
    assert template is not None
    folder = jobs_folder(tmp_path / "jobs")
    jobs = EnhanceJobs(folder, slow_load, template.conditioner, max_waiting=2)
    template.close()
    source = library.original_path(photo_id(library, "dim-noisy.png"))
    first = jobs.submit_photo(source, "a.png", JobRequest(), photo_id=1)
    deadline = time.monotonic() + 10
    while jobs.get(first.id).state == "queued":  # the worker took it and waits in slow_load
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(ImageDecodeError):
        jobs.submit_upload(io.BytesIO(b"GIF89a broken"), "e.gif", JobRequest())
    assert list(folder.iterdir()) == []  # the refused upload was not kept
    jobs.submit_photo(source, "b.png", JobRequest(), photo_id=1)
    jobs.submit_photo(source, "c.png", JobRequest(), photo_id=1)
    with pytest.raises(ServerBusyError):
        jobs.submit_photo(source, "d.png", JobRequest(), photo_id=1)
    with pytest.raises(ServerBusyError):  # refused before its bytes go to disk
        jobs.submit_upload(io.BytesIO(source.read_bytes()), "f.png", JobRequest())
    assert list(folder.iterdir()) == []
    release.set()
    jobs.close(timeout=JOB_TIMEOUT_S)
    assert not folder.exists()


def test_a_killed_servers_jobs_folder_is_removed_at_the_next_start(tmp_path: Path) -> None:
    parent = tmp_path / "enhance-jobs"
    stale = parent / "999999999-deadbeef"  # no such process
    stale.mkdir(parents=True)
    (stale / "x.jpg").write_bytes(b"result")
    fresh = jobs_folder(parent)
    assert not stale.exists() and fresh.is_dir()


def test_a_colour_profile_is_kept_only_for_the_colour_space_it_describes(tmp_path: Path) -> None:
    from PIL import ImageCms

    from clipalbum.server.enhance.photoio import SourcePhoto, write_photo

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]  # what a CMYK original carries, as far as the header says
    for profile, kept in ((srgb, True), (cmyk, False)):
        source = SourcePhoto(CLEAN, "JPEG", False, None, None, profile)
        target = tmp_path / f"{kept}.jpg"
        write_photo(Image.fromarray(CLEAN), source, target, "JPEG", overwrite=False)
        assert (Image.open(target).info.get("icc_profile") == profile) is kept
        grey = tmp_path / f"{kept}-grey.png"  # an RGB profile on a grey result would misrender it too
        write_photo(Image.fromarray(CLEAN).convert("L"), source, grey, "PNG", overwrite=False)
        assert Image.open(grey).info.get("icc_profile") is None


def test_finished_results_are_kept_within_a_disk_budget_the_newest_always(tmp_path: Path, library: Library) -> None:
    template = enhance_jobs(library)
    assert template is not None
    template.close()
    jobs = EnhanceJobs(jobs_folder(tmp_path / "jobs"), lambda: Enhancer(PACKAGED_ENHANCER), template.conditioner,
                       max_result_bytes=1)  # less than any result: only the newest is ever kept
    source = library.original_path(photo_id(library, "dim-noisy.png"))
    finished = []
    for name in ("a.png", "b.png", "c.png"):
        job = jobs.submit_photo(source, name, JobRequest(preview=64), photo_id=1)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while jobs.get(job.id).state != "done":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        finished.append(job.id)
        assert jobs.result(job.id).result_bytes > 1  # the newest, over the budget on its own, stays
    with pytest.raises(NotFoundError):
        jobs.get(finished[0])
    assert [p.name.split(".")[0] for p in jobs.folder.iterdir()] == [finished[-1]]
    jobs.close()
