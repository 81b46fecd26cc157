"""Enhance in the viewer, in a real Chromium against a real `clipalbum serve` with the packaged enhancer: the
preview and its before/after divider, the corrections and the prompt, saving the full size, cancelling, and the
error messages."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from tests.browser.conftest import RunningServer

pytestmark = pytest.mark.browser

ENHANCE_POST = re.compile(r"/api/images/\d+/enhance$")
JOB = re.compile(r".*/api/jobs/([0-9a-f]{32})$")  # a job's state (GET) or cancelling it (DELETE), not its result
RESULT = re.compile(r"/api/jobs/([0-9a-f]{32})/result$")
PREVIEW_READY = """prev => {
    const img = document.getElementById('enhance-after');
    return !document.getElementById('compare').hidden && img.src.startsWith('blob:') && img.src !== prev
        && img.complete && img.naturalWidth > 0
        && document.getElementById('enhance-status').textContent.startsWith('Preview ready');
}"""


@pytest.fixture(scope="module", autouse=True)
def packaged_enhancer() -> None:
    from clipalbum.server.enhance.manifest import enhancer_dir
    from clipalbum.server.errors import BundleError

    try:
        enhancer_dir(None)
    except BundleError as exc:
        pytest.skip(f"no enhancer to serve: {exc}")


class Traffic:
    """What the page asks the enhance API, in order."""

    def __init__(self, page) -> None:
        self.events: list[tuple[str, str, dict | None]] = []  # (method, job id or photo URL, POST body)
        self.results: list[tuple[str, int, str]] = []  # (job id, status, content type) of fetched results
        self.jobs: list[str] = []  # ids of the jobs the POSTs started, in order
        self.console_errors: list[str] = []
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("console", lambda message: message.type == "error" and self.console_errors.append(message.text))

    def _request(self, request) -> None:
        if request.method == "POST" and ENHANCE_POST.search(request.url):
            self.events.append(("POST", request.url, json.loads(request.post_data)))
        elif request.method == "DELETE" and JOB.match(request.url):
            self.events.append(("DELETE", JOB.match(request.url).group(1), None))

    def _response(self, response) -> None:
        if response.request.method == "POST" and ENHANCE_POST.search(response.url) and response.status == 202:
            self.jobs.append(response.json()["id"])
        elif match := RESULT.search(response.url):
            self.results.append((match.group(1), response.status, response.headers.get("content-type", "")))

    def posts(self) -> list[dict]:
        return [body for method, _, body in self.events if method == "POST"]

    def deleted(self) -> list[str]:
        return [job for method, job, _ in self.events if method == "DELETE"]


def open_photo(page, server: RunningServer, query: str, name: str) -> None:
    page.goto(f"{server.url}/?q={query.replace(' ', '+')}")
    page.locator("#grid li").first.wait_for()
    names = page.locator("#grid li .cell-name").all_inner_texts()
    page.locator("#grid li a").nth(names.index(name)).click()
    page.locator("#viewer").wait_for()
    page.wait_for_function("() => { const i = document.getElementById('viewer-img');"
                           " return i.complete && i.naturalWidth > 0; }")


def wait_for_preview(page, previous: str | None = None) -> str:
    """Waits until a preview newer than `previous` (an <img> src) is on screen; returns its src."""
    page.wait_for_function(PREVIEW_READY, arg=previous or "", timeout=60_000)
    return page.locator("#enhance-after").get_attribute("src")


def split_x(page) -> float:
    box = page.locator(".compare-divider").bounding_box()
    return box["x"] + box["width"] / 2


class HeldPolls:
    """Holds the page's job polls (GET /api/jobs/ID) unanswered, so that the page sees its job running for as
    long as a test needs; cancelling (DELETE) goes through to the real server."""

    def __init__(self, page) -> None:
        self.page, self.held, self.holding = page, [], True
        page.route(JOB, self._route)

    def _route(self, route) -> None:
        if route.request.method == "GET" and self.holding:
            self.held.append(route)
        else:
            route.continue_()

    def wait(self, count: int = 1) -> None:
        for _ in range(200):
            if len(self.held) >= count:
                return
            self.page.wait_for_timeout(25)
        raise AssertionError("the page did not poll its job")

    def answer(self, **fields) -> None:
        """Answers every held poll with a made-up job state (the real job may be gone: it was cancelled)."""
        self.holding = False
        for route in self.held:
            job_id = JOB.match(route.request.url).group(1)
            body = {"id": job_id, "state": "running", "progress": 0.5, "queue_position": None, "name": "x.jpg",
                    "photo_id": 1, "preview": 1024, "created_at": "", "started_at": None, "finished_at": None,
                    "error": None, "result_url": None, "width": None, "height": None, "applied": None, **fields}
            if body["state"] == "done":
                body["result_url"] = f"/api/jobs/{job_id}/result"
            route.fulfill(status=200, content_type="application/json", body=json.dumps(body))
        self.held.clear()

    def stop(self) -> None:
        self.answer()
        self.page.unroute(JOB)


def test_enhance_previews_compares_adjusts_saves_and_cancels(page, album_server, tmp_path):
    traffic = Traffic(page)
    open_photo(page, album_server, "a cup of coffee", "coffee.jpg")
    enhance = page.get_by_role("button", name="Enhance", exact=True)
    panel = page.locator("#enhance")
    assert panel.is_hidden() and enhance.get_attribute("aria-expanded") == "false"

    # Enhance: a preview at the viewer's size, with the model's own choices.
    enhance.click()
    assert enhance.get_attribute("aria-expanded") == "true"
    panel.wait_for()
    first = wait_for_preview(page)
    assert traffic.posts() == [{"preview": 1024}]
    preview_job = traffic.jobs[0]
    assert (preview_job, 200, "image/jpeg") in traffic.results  # the <img> shows the job's result, as a blob
    width = page.locator("#enhance-after").evaluate("img => img.naturalWidth")
    assert 0 < width <= 1024
    assert preview_job in traffic.deleted()  # fetched, then forgotten on the server
    assert re.fullmatch(r"Auto: [+−±]\d+\.\d EV", page.locator("#enhance-exposure-value").inner_text())
    assert re.fullmatch(r"Auto: \+\d+ %", page.locator("#enhance-contrast-value").inner_text())
    assert page.locator("#enhance-temperature-value").inner_text() == "Auto"
    assert re.fullmatch(r"Auto: \d+ %", page.locator("#enhance-denoise-value").inner_text())
    assert page.get_by_role("slider", name="Light the photo was taken in").get_attribute("max") == "12000"
    assert page.locator("#enhance-error").is_hidden()

    # The before/after divider: the keyboard and the mouse move it, and the enhanced part follows.
    figure = page.locator(".viewer-figure").bounding_box()
    clip = "() => getComputedStyle(document.getElementById('enhance-after')).clipPath"
    assert page.evaluate(clip) == "inset(0px 0px 0px 50%)"
    assert abs(split_x(page) - (figure["x"] + figure["width"] / 2)) < 3
    title = page.locator("#viewer-title").inner_text()
    split = page.get_by_label("Before and after: where the enhanced photo begins")
    split.focus()
    page.keyboard.press("ArrowLeft")  # moves the divider, does not page to another photo
    page.keyboard.press("Home")
    assert page.evaluate(clip) == "inset(0px 0px 0px 0%)"
    assert abs(split_x(page) - figure["x"]) < 3
    assert page.locator("#viewer-title").inner_text() == title
    split.click(position={"x": figure["width"] * 0.75, "y": figure["height"] / 2})
    assert abs(int(split.input_value()) - 75) <= 2
    assert abs(split_x(page) - (figure["x"] + figure["width"] * 0.75)) < 0.03 * figure["width"]

    # A fixed exposure: one new preview with it (the keys come faster than the debounce), Auto off for it only.
    exposure = page.get_by_role("slider", name="Exposure")
    exposure.fill("1.5")
    for _ in range(3):
        exposure.press("ArrowRight")
    second = wait_for_preview(page, first)
    assert traffic.posts()[1:] == [{"exposure": 1.8, "preview": 1024}]
    assert page.locator("#enhance-exposure-value").inner_text() == "+1.8 EV"
    assert not page.locator("#enhance-exposure-auto").is_checked()
    assert re.fullmatch(r"Auto: \+\d+ %", page.locator("#enhance-contrast-value").inner_text())

    # A prompt joins the settings.
    page.get_by_label("Describe the look").fill("warm evening light")
    third = wait_for_preview(page, second)
    assert traffic.posts()[-1] == {"exposure": 1.8, "prompt": "warm evening light", "preview": 1024}
    assert page.locator("#enhance-error").is_hidden()

    # Save full size: the same settings at full size, and a download named after the photo.
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Save full size").click()
    download = download_info.value
    assert traffic.posts()[-1] == {"exposure": 1.8, "prompt": "warm evening light"}
    assert "-enhanced" in download.suggested_filename and "preview" not in download.suggested_filename
    assert download.suggested_filename.startswith("coffee")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(io.BytesIO(saved.read_bytes())) as img:
        assert img.size == (600, 400)  # coffee's full size, not the preview's
    page.wait_for_function("() => document.getElementById('enhance-save-status').textContent.startsWith('Saved')")
    assert page.get_by_role("button", name="Save full size").is_enabled()

    # Another photo while a job runs: the job is cancelled and the panel closes.
    polls = HeldPolls(page)
    exposure.fill("-0.5")
    polls.wait()
    running = traffic.jobs[-1]
    with page.expect_request(lambda r: r.method == "DELETE" and r.url.endswith(running)):
        page.locator("#viewer-next").click()
    page.wait_for_function("t => document.getElementById('viewer-title').textContent !== t", arg=title)
    assert panel.is_hidden() and page.locator("#compare").is_hidden()
    assert enhance.get_attribute("aria-expanded") == "false"

    # Closing the viewer while a job runs: cancelled too.
    enhance.click()
    polls.wait(2)
    running = traffic.jobs[-1]
    assert traffic.posts()[-1] == {"preview": 1024}  # a new photo starts from Auto
    with page.expect_request(lambda r: r.method == "DELETE" and r.url.endswith(running)):
        page.locator("#viewer-close").click()
    page.locator("#viewer").wait_for(state="hidden")
    polls.stop()  # their answers come after the close: the page must ignore them
    assert third != second != first
    assert not traffic.console_errors, traffic.console_errors


def test_a_newer_preview_cancels_the_older_and_ignores_its_answer(page, album_server):
    traffic = Traffic(page)
    open_photo(page, album_server, "a cup of coffee", "coffee.jpg")
    polls = HeldPolls(page)
    page.get_by_role("button", name="Enhance", exact=True).click()
    polls.wait()
    older = traffic.jobs[0]
    polls.holding = False  # the newer job's polls go through
    with page.expect_request(lambda r: r.method == "DELETE" and r.url.endswith(older)):
        page.get_by_role("slider", name="Contrast").fill("0.5")
    # The older job's poll answers only now, "done" with a wild exposure: the page must not show it.
    polls.answer(state="done", progress=1.0, applied={"exposure": 4.2, "contrast": 0.9, "red_gain": 1,
                                                      "blue_gain": 1})
    wait_for_preview(page)
    page.unroute(JOB)
    methods = [(method, job if method == "DELETE" else body) for method, job, body in traffic.events]
    assert methods[:3] == [("POST", {"preview": 1024}), ("DELETE", older), ("POST", {"contrast": 0.5, "preview": 1024})]
    assert older not in {job for job, _, _ in traffic.results}
    assert [job for job, _, _ in traffic.results] == [traffic.jobs[1]]
    assert "4.2" not in page.locator("#enhance-exposure-value").inner_text()
    assert page.locator("#enhance-contrast-value").inner_text() == "+50 %"
    assert not traffic.console_errors, traffic.console_errors


def test_errors_are_readable_messages(page, album_server):
    traffic = Traffic(page)
    open_photo(page, album_server, "a cup of coffee", "coffee.jpg")
    error = page.locator("#enhance-error")
    assert error.get_attribute("role") == "alert"

    def refuse(status: int, detail: str, only_with: str | None = None):
        def handler(route) -> None:
            if only_with and only_with not in (route.request.post_data or ""):
                route.continue_()
            else:
                route.fulfill(status=status, content_type="application/json", body=json.dumps({"detail": detail}))
        page.route(re.compile(r".*/api/images/\d+/enhance$"), handler)

    # Busy, or no enhancer on this server (503).
    refuse(503, "8 enhancement jobs are waiting already; try again later")
    page.get_by_role("button", name="Enhance", exact=True).click()
    page.wait_for_function("() => !document.getElementById('enhance-error').hidden")
    assert error.inner_text() == ("Enhancing is not available right now: 8 enhancement jobs are waiting already; "
                                  "try again later")
    assert page.locator("#enhance-progress").is_hidden()
    page.unroute(re.compile(r".*/api/images/\d+/enhance$"))

    # A prompt the model in use cannot follow (409): the server's reason.
    refuse(409, "a prompt needs the search model the enhancer was trained with", only_with="prompt")
    page.get_by_label("Describe the look").fill("brighter")
    page.wait_for_function("() => document.getElementById('enhance-error').textContent.includes('prompt')")
    assert error.inner_text() == "The prompt cannot be used: a prompt needs the search model the enhancer was trained with"
    page.unroute(re.compile(r".*/api/images/\d+/enhance$"))

    # An unreadable photo (422).
    refuse(422, "coffee.jpg: not a photo (truncated)")
    page.get_by_label("Describe the look").fill("")
    page.wait_for_function("() => document.getElementById('enhance-error').textContent.includes('truncated')")
    assert error.inner_text() == "This photo cannot be enhanced: coffee.jpg: not a photo (truncated)"
    page.unroute(re.compile(r".*/api/images/\d+/enhance$"))

    # A job that fails on the server.
    page.route(JOB, lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps({
        "id": JOB.match(route.request.url).group(1), "state": "failed", "progress": 0.25, "queue_position": None,
        "name": "coffee.jpg", "photo_id": 1, "preview": 1024, "created_at": "", "started_at": None,
        "finished_at": None, "error": "the enhancer ran out of memory", "result_url": None, "width": None,
        "height": None, "applied": None})) if route.request.method == "GET" else route.continue_())
    page.get_by_role("slider", name="Noise reduction").fill("0.8")
    page.wait_for_function("() => document.getElementById('enhance-error').textContent.includes('memory')")
    assert error.inner_text() == "Enhancing failed: the enhancer ran out of memory"
    page.unroute(JOB)

    # All good again: the error goes away with the next preview.
    page.get_by_role("button", name="All auto").click()
    wait_for_preview(page)
    assert error.is_hidden()
    assert traffic.posts()[-1] == {"preview": 1024}
    unexpected = [m for m in traffic.console_errors if "Failed to load resource" not in m]
    assert not unexpected, unexpected


def test_enhance_on_a_phone_screen(browser, album_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  color_scheme="dark")
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_photo(page, album_server, "a cup of coffee", "coffee.jpg")
        page.get_by_role("button", name="Enhance", exact=True).click()
        wait_for_preview(page)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
        side = page.locator(".viewer-side")
        assert side.evaluate("el => el.scrollWidth <= el.clientWidth"), "the panel scrolls sideways"
        # Every control has a name a screen reader reads out, and the divider sits on the photo.
        for control in page.locator("#enhance input, #compare input").all():
            assert control.evaluate("el => Boolean(el.labels?.length || el.getAttribute('aria-label'))")
        for button in page.locator("#enhance button").all():
            assert button.inner_text().strip()
        figure = page.locator(".viewer-figure").bounding_box()
        assert figure["x"] <= split_x(page) <= figure["x"] + figure["width"]
        page.get_by_role("button", name="Save full size").scroll_into_view_if_needed()
        assert page.get_by_role("button", name="Save full size").is_visible()
        assert not errors, errors
    finally:
        context.close()
