"""The web client in a real Chromium against a real `clipalbum serve` over a real, indexed album."""

from __future__ import annotations

import base64
import re
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.conftest import (CAPTURE_DATES, CORRUPT_NAME, NEAR_DUPLICATE, UNDATED, RunningServer,
                                    copy_source_photo, make_album, photo_name, start_server)

ALBUM_NAMES = sorted([photo_name(n) for n in CAPTURE_DATES] + list(UNDATED))

pytestmark = pytest.mark.browser

SUMMARY = re.compile(r"(\d+) photos?( so far)?(, by capture date)? in \d+ ms")


def result_names(page) -> list[str]:
    """File names of the results, in the order the grid shows them."""
    return page.locator("#grid li .cell-name").all_inner_texts()


def search(page, server: RunningServer, text: str) -> list[str]:
    page.goto(server.url + "/")
    page.locator("#q").press_sequentially(text, delay=30)  # as a person types: the page must debounce
    page.wait_for_function("q => new URL(location).searchParams.get('q') === q", arg=text)
    page.locator("#grid li").first.wait_for()
    return result_names(page)


def search_everything(page, server: RunningServer, text: str) -> list[str]:
    """Every photo for `text`, the weak matches too (as after "Show weaker matches")."""
    page.goto(f"{server.url}/?{urllib.parse.urlencode({'q': text, 'all': '1'})}")
    page.locator("#grid li").first.wait_for()
    return result_names(page)


class TestSearchAsYouType:
    def test_typing_a_description_shows_the_matching_photo_with_count_and_time(self, page, album_server):
        names = search(page, album_server, "a cat")
        assert "chelsea.jpg" in names[:3], names
        summary = page.locator("#summary").inner_text()
        match = SUMMARY.search(summary)
        assert match and int(match.group(1)) == len(names), summary
        # The thumbnails really load (lazily, but the first row is on screen).
        first = page.locator("#grid li img").first
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first.element_handle())
        assert first.get_attribute("loading") == "lazy"
        assert first.get_attribute("alt").startswith("Photo ")

    def test_every_described_photo_is_found_first_or_close(self, page, album_server):
        names = search(page, album_server, "a cup of coffee")
        assert "coffee.jpg" in names[:3], names

    def test_no_results_and_server_errors_get_clear_messages(self, page, album_server):
        # A date range that holds no photo: a message, not an empty page.
        page.goto(album_server.url + "/?q=a+cat&from=1990-01-01&to=1990-12-31")
        message = page.locator("#message")
        message.wait_for()
        assert "No strong matches for “a cat” in this date range." in message.inner_text()
        page.get_by_role("button", name="Show weaker matches").click()  # none there either: the date is why
        page.wait_for_function("() => document.getElementById('message').textContent.includes('No photos match')")
        assert "all=1" in page.url
        # The server failing: the page says so, and "Try again" recovers.
        page.route("**/api/search?*", lambda route: route.fulfill(
            status=500, content_type="application/json", body='{"detail": "the index is on fire"}'))
        page.goto(album_server.url + "/?q=a+cat")
        page.locator("#message.error").wait_for()
        assert "the index is on fire" in message.inner_text()
        assert message.get_attribute("role") == "alert"
        page.unroute("**/api/search?*")
        page.get_by_role("button", name="Try again").click()
        page.locator("#grid li").first.wait_for()
        assert message.is_hidden()
        # The server gone: the page says it cannot reach it.
        page.route("**/api/search?*", lambda route: route.abort("connectionrefused"))
        page.locator("#q").fill("a dog")
        page.wait_for_function("() => document.getElementById('message').textContent.includes('Cannot reach')")
        page.unroute("**/api/search?*")
        # An unknown photo id is a 404 from the real server, shown as such.
        page.goto(album_server.url + "/?similar=987654")
        page.locator("#message.error").wait_for()
        assert "404" in message.inner_text()

    def test_more_results_load_in_pages_as_the_end_of_the_grid_comes_into_view(self, page, album_server):
        # Pages of 2 (the test rewrites k in the page's requests) so that the album takes several offsets.
        offsets: list[int] = []

        def small_pages(route):
            url = re.sub(r"k=\d+", "k=2", route.request.url)
            offsets.append(int(re.search(r"offset=(\d+)", url).group(1)))
            route.continue_(url=url)

        page.route(re.compile(r".*/api/search\?.*"), small_pages)
        page.goto(album_server.url + "/?q=a+photo&all=1")  # every photo, weak matches too
        page.locator("#grid li").first.wait_for()
        page.locator("#more").wait_for(state="hidden")
        seen = result_names(page)
        assert sorted(seen) == ALBUM_NAMES, seen
        assert len(set(seen)) == len(seen), "a photo came twice across pages"
        assert offsets == [0, 2, 4, 6, 8], offsets
        assert f"{len(ALBUM_NAMES)} photos in" in page.locator("#summary").inner_text()

    def test_a_query_that_matches_nothing_shows_only_strong_matches_until_asked(self, page, album_server):
        page.goto(album_server.url + "/?q=xkcd+blorf+qwerty")
        page.get_by_role("button", name="Show weaker matches").wait_for()
        strong = result_names(page)
        assert len(strong) < len(ALBUM_NAMES)  # the model's cut-off left the noise out
        if strong:
            assert "weaker matches left out" in page.locator("#summary").inner_text()
        else:
            assert "No strong matches for “xkcd blorf qwerty”." in page.locator("#message").inner_text()
        page.get_by_role("button", name="Show weaker matches").click()
        page.wait_for_function("n => document.querySelectorAll('#grid li').length === n", arg=len(ALBUM_NAMES))
        assert result_names(page)[:len(strong)] == strong  # the weak ones continue the list
        assert "all=1" in page.url and "left out" not in page.locator("#summary").inner_text()
        assert page.locator("#weaker").is_hidden()
        page.go_back()  # back to the cut list
        page.wait_for_function("() => !new URL(location).searchParams.has('all')")
        page.wait_for_function("n => document.querySelectorAll('#grid li').length === n", arg=len(strong))
        # A real description keeps its photo under the cut, and a new query starts cut again.
        page.locator("#q").fill("a cat")
        page.wait_for_function("() => new URL(location).searchParams.get('q') === 'a cat'")
        page.locator("#grid li").first.wait_for()
        assert "chelsea.jpg" in result_names(page)[:3] and "all=1" not in page.url


class TestViewer:
    def test_viewer_shows_details_pages_with_arrow_keys_and_closes_with_escape(self, page, album_server):
        names = search(page, album_server, "a cat")
        page.locator("#grid li a").first.click()
        viewer = page.locator("#viewer")
        viewer.wait_for()
        assert page.locator("#viewer-title").inner_text() == names[0]
        assert page.locator("#viewer-pos").inner_text() == f"1 of {len(names)}"
        assert re.search(r"\d+ × \d+ px", page.locator("#viewer-size").inner_text())
        # The capture date is shown; chelsea's is 15 June 2019.
        if names[0] == "chelsea.jpg":
            assert "2019" in page.locator("#viewer-date").inner_text()
        original = page.locator("#viewer-original").get_attribute("href")
        with urllib.request.urlopen(f"{album_server.url}/{original}") as response:
            assert response.headers["Content-Type"].startswith("image/")
        page.wait_for_function("() => { const i = document.getElementById('viewer-img');"
                               " return i.complete && i.naturalWidth > 0; }")
        first_view = page.url
        assert "view=" in first_view

        page.keyboard.press("ArrowRight")
        page.wait_for_function("n => document.getElementById('viewer-title').textContent === n", arg=names[1])
        assert page.locator("#viewer-pos").inner_text() == f"2 of {len(names)}"
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("n => document.getElementById('viewer-title').textContent === n", arg=names[0])

        page.keyboard.press("Escape")
        viewer.wait_for(state="hidden")
        page.wait_for_function("() => !new URL(location).searchParams.has('view')")
        # Keyboard users land back on the photo they opened.
        assert page.evaluate("document.activeElement.dataset.index") == "0"

    def test_keyboard_alone_opens_the_viewer(self, page, album_server):
        search(page, album_server, "a rocket")
        page.locator("#grid li a").first.focus()
        page.keyboard.press("Enter")
        page.locator("#viewer").wait_for()
        page.keyboard.press("Escape")
        page.locator("#viewer").wait_for(state="hidden")

    def test_more_like_this_lists_photos_like_the_open_one(self, page, album_server):
        names = search(page, album_server, "a cat")
        index = names.index("chelsea.jpg")
        page.locator("#grid li a").nth(index).click()
        page.get_by_role("button", name="More like this").click()
        page.wait_for_function("() => new URL(location).searchParams.has('similar')")
        page.wait_for_function("() => document.getElementById('summary').textContent.startsWith('Photos like')")
        page.locator("#grid li").first.wait_for()
        similar = result_names(page)
        assert similar[0] == NEAR_DUPLICATE, similar
        assert "chelsea.jpg" not in similar  # the photo itself is left out
        assert "chelsea.jpg" in page.locator("#summary").inner_text()
        assert page.locator("#q").input_value() == ""
        # The URL alone brings it back (the page asks the server which photo the id is).
        page.reload()
        page.wait_for_function("() => document.getElementById('summary').textContent.startsWith("
                               "'Photos like chelsea.jpg')")
        assert result_names(page) == similar
        # Back returns to the text search, with the viewer open on the photo it came from.
        page.go_back()
        page.wait_for_function("() => new URL(location).searchParams.get('q') === 'a cat'")
        page.locator("#viewer").wait_for()
        assert page.locator("#viewer-title").inner_text() == "chelsea.jpg"

    def test_a_bookmarked_photo_opens_on_its_own(self, page, album_server):
        names = search(page, album_server, "a motorcycle")
        photo_id = page.locator("#grid li a").first.get_attribute("data-id")
        page.goto(f"{album_server.url}/?view={photo_id}")
        page.locator("#viewer").wait_for()
        assert page.locator("#viewer-title").inner_text() == names[0]
        assert page.locator("#viewer-next").is_disabled()


class TestSearchByPhoto:
    def test_picking_a_photo_finds_the_same_scene(self, page, album_server, tmp_path):
        upload = copy_source_photo("coffee.png", tmp_path)  # the original PNG, not the album's JPEG
        page.goto(album_server.url + "/")
        page.locator("#pick").set_input_files(str(upload))
        page.wait_for_function("() => document.getElementById('summary').textContent.startsWith('Photos like')")
        page.locator("#grid li").first.wait_for()
        assert result_names(page)[0] == "coffee.jpg"
        assert "coffee.png" in page.locator("#summary").inner_text()

    def test_a_file_that_is_not_a_photo_gets_a_clear_message(self, page, album_server, tmp_path):
        notes = tmp_path / "notes.txt"
        notes.write_text("shopping list: milk, eggs")
        page.goto(album_server.url + "/")
        page.locator("#pick").set_input_files(str(notes))
        page.locator("#message.error").wait_for()
        assert "notes.txt is not a photo" in page.locator("#message").inner_text()
        # A file that claims to be an image but is not: the server's 4xx reason is shown.
        page.locator("#pick").set_input_files(files=[{"name": "fake.jpg", "mimeType": "image/jpeg",
                                                      "buffer": b"not a jpeg"}])
        page.wait_for_function("() => /\\(4\\d\\d\\)/.test(document.getElementById('message').textContent)")

    def test_the_first_status_does_not_hide_an_error_shown_before_it(self, page, album_server, tmp_path):
        # The start page is drawn again when the first status arrives; a file picked before that (no photo)
        # had its error replaced by the landing text.
        notes = tmp_path / "notes.txt"
        notes.write_text("shopping list: milk, eggs")
        held, release = [], []

        def hold_until_released(route) -> None:  # the first status polls wait until the error is up
            if release:
                route.continue_()
            else:
                held.append(route)

        page.route("**/api/status*", hold_until_released)
        page.goto(album_server.url + "/")
        page.locator("#pick").set_input_files(str(notes))
        page.locator("#message.error").wait_for()
        release.append(True)
        for route in held:
            route.continue_()
        page.wait_for_function("() => /indexed/.test(document.getElementById('counts').textContent)")
        assert "notes.txt is not a photo" in page.locator("#message").inner_text()

    def test_dropping_a_photo_onto_the_page_finds_the_same_scene(self, page, album_server, tmp_path):
        upload = copy_source_photo("astronaut.png", tmp_path)
        page.goto(album_server.url + "/")
        page.evaluate("""([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const file = new File([bytes], name, { type: "image/png" });
            const transfer = new DataTransfer();
            transfer.items.add(file);
            for (const type of ["dragenter", "dragover", "drop"]) {
                window.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""", [base64.b64encode(upload.read_bytes()).decode(), upload.name])
        page.locator("#grid li").first.wait_for()
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('astronaut.png')")
        assert result_names(page)[0] == "astronaut.jpg"
        assert page.locator("#drop").is_hidden()


class TestSortAndDates:
    def test_sorting_by_capture_date_puts_the_newest_first(self, page, album_server):
        search_everything(page, album_server, "a photo")
        page.get_by_label("Sort", exact=True).select_option("date")
        page.wait_for_function("() => new URL(location).searchParams.get('sort') === 'date'")
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('by capture date')")
        dated = sorted(CAPTURE_DATES, key=CAPTURE_DATES.get, reverse=True)
        names = result_names(page)
        shown_dated = [n for n in names if n not in UNDATED]
        assert shown_dated == [photo_name(n) for n in dated], names

    def test_a_date_range_narrows_the_results(self, page, album_server):
        search_everything(page, album_server, "a photo")
        page.get_by_label("From", exact=True).fill("2019-01-01")
        page.get_by_label("To", exact=True).fill("2021-12-31")
        page.wait_for_function("() => new URL(location).searchParams.get('to') === '2021-12-31'")
        page.wait_for_function("() => !document.getElementById('summary').textContent.startsWith('Searching')")
        expected = {photo_name(n) for n, t in CAPTURE_DATES.items() if "2019" <= t[:4] <= "2021"}
        assert set(result_names(page)) == expected
        page.get_by_role("button", name="Any date").click()
        page.wait_for_function("() => !new URL(location).searchParams.has('from')")
        page.wait_for_function("n => document.querySelectorAll('#grid li').length > n", arg=len(expected))


class TestUrlState:
    def test_the_url_restores_query_and_options_on_reload_and_back(self, page, album_server):
        page.goto(album_server.url + "/?q=a+cat&sort=date&from=2015-01-01")
        page.locator("#grid li").first.wait_for()
        assert page.locator("#q").input_value() == "a cat"
        assert page.get_by_label("Sort", exact=True).input_value() == "date"
        assert page.get_by_label("From", exact=True).input_value() == "2015-01-01"

        page.locator("#q").fill("a rocket")
        page.locator("#q").press("Enter")
        page.wait_for_function("() => new URL(location).searchParams.get('q') === 'a rocket'")
        page.go_back()
        page.wait_for_function("() => document.getElementById('q').value === 'a cat'")
        page.wait_for_function("() => new URL(location).searchParams.get('sort') === 'date'")
        page.go_forward()
        page.wait_for_function("() => document.getElementById('q').value === 'a rocket'")
        page.wait_for_function("() => !document.getElementById('summary').textContent.startsWith('Searching')")
        before = result_names(page)
        assert before

        page.reload()
        page.locator("#grid li").first.wait_for()
        assert page.locator("#q").input_value() == "a rocket"
        assert result_names(page) == before
        assert page.get_by_label("Sort", exact=True).input_value() == "date"
        assert page.get_by_label("From", exact=True).input_value() == "2015-01-01"


class TestIndexStatus:
    def test_failed_files_are_listed_with_their_reason(self, page, album_server):
        page.goto(album_server.url + "/")
        page.wait_for_function("() => document.getElementById('counts').textContent.includes('indexed')")
        counts = page.locator("#counts").inner_text()
        assert f"{len(ALBUM_NAMES)} photos indexed" in counts and "1 failed" in counts, counts
        page.locator("#failed summary").click()
        item = page.locator("#failed-list li").first
        assert CORRUPT_NAME in item.inner_text()
        assert len(item.inner_text().split(":", 1)[1].strip()) > 3  # a reason, not just the name

    def test_an_empty_album_then_a_rescan_shows_progress_and_then_results(self, page, browser, tmp_path,
                                                                        default_bundle):
        album = tmp_path / "album"
        album.mkdir()
        server = start_server(album, tmp_path / "data", default_bundle)
        try:
            page.goto(server.url + "/")
            page.wait_for_function("() => document.getElementById('message').textContent.includes('No photos are "
                                   "indexed yet')")
            page.goto(server.url + "/?q=a+cat")
            page.locator("#message.empty").wait_for()
            assert "no indexed photos" in page.locator("#message").inner_text()
            assert page.locator("#progress").is_hidden()

            # Photos arrive: the sample album, and enough variants of it that the scan takes a while.
            make_album(album, corrupt=False)
            variants = album / "variants"
            variants.mkdir()
            for source in sorted(album.rglob("*.jpg"))[:8]:
                with Image.open(source) as img:
                    for turn in range(1, 13):
                        img.rotate(turn * 7, expand=True).save(variants / f"{source.stem}-{turn}.jpg", quality=85)
            # Watch the progress bar from inside the page: a short scan must not slip between two checks.
            page.evaluate("""() => { window.progressSeen = [];
                new MutationObserver(() => { const p = document.getElementById('progress');
                    if (!p.hidden) window.progressSeen.push([p.value, p.max]); })
                .observe(document.getElementById('progress'), { attributes: true }); }""")
            page.get_by_role("button", name="Rescan album").click()
            page.wait_for_function("() => window.progressSeen.length > 0", timeout=60_000)
            page.locator("#progress").wait_for(state="hidden", timeout=120_000)
            counts = page.locator("#counts").inner_text()
            assert f"{len(ALBUM_NAMES) + 8 * 12} photos indexed" in counts, counts
            assert page.locator("#rescan").is_enabled()
            # The scan finished while the page showed "empty": it searches again by itself.
            page.locator("#grid li").first.wait_for()
            top = result_names(page)[:5]
            assert all(name.startswith("chelsea") for name in top), top  # the cat and its variants
        finally:
            server.stop()


class TestLooks:
    def test_phone_screen_dark_mode_and_labels(self, browser, album_server):
        context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                      color_scheme="dark")
        try:
            page = context.new_page()
            page.goto(album_server.url + "/?q=a+cat")
            page.locator("#grid li").first.wait_for()
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
            assert red + green + blue < 150, background  # dark
            # Every control has a name a screen reader can read out.
            for selector in ("#q", "#sort", "#from", "#to", "#pick"):
                assert page.locator(selector).evaluate(
                    "el => Boolean(el.labels?.length || el.getAttribute('aria-label'))"), selector
            for button in page.locator("button:visible").all():
                assert (button.inner_text().strip() or button.get_attribute("aria-label")), button
            # The viewer fills the phone screen.
            page.locator("#grid li a").first.click()
            box = page.locator("#viewer").bounding_box()
            assert box["width"] >= 380
        finally:
            context.close()


def test_the_page_is_light_and_a_second_visit_only_revalidates(page, album_server):
    """The page's own files (HTML, CSS, JS modules, icon) are all used, small, and cached; bench/web_page.py
    reports the exact figures."""
    web = Path(__file__).resolve().parents[2] / "web"
    own = {p.name for p in web.iterdir() if p.is_file()}
    timing = """() => performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
        .filter(e => !e.name.includes('/api/'))
        .map(e => [new URL(e.name).pathname.slice(1) || 'index.html', e.transferSize, e.decodedBodySize])"""
    page.goto(album_server.url + "/", wait_until="networkidle")
    first = {name: (sent, body) for name, sent, body in page.evaluate(timing)}
    assert set(first) == own, "every file in web/ is used by the page, and nothing else is fetched"
    assert sum(body for _, body in first.values()) < 100_000
    page.reload(wait_until="networkidle")
    repeat = page.evaluate(timing)
    assert {name for name, _, _ in repeat} == own
    assert all(sent < 1_000 for _, sent, _ in repeat), repeat  # headers only: 304 Not Modified


@pytest.fixture(scope="module")
def network_server(tmp_path_factory: pytest.TempPathFactory, default_bundle: Path,
                   chromium_executable: Path):
    """`clipalbum serve --host 0.0.0.0`: reachable from the network, so the page must log in first."""
    root = tmp_path_factory.mktemp("web-network")
    server = start_server(make_album(root / "album", corrupt=False), root / "data", default_bundle, host="0.0.0.0")
    yield server
    server.stop()


class TestLoginBeyondLoopback:
    def test_serve_warns_and_shows_the_new_token_once(self, network_server: RunningServer) -> None:
        log = network_server.log_tail()
        assert "reachable from the network" in log
        assert network_server.token and network_server.token in log

    def test_the_page_asks_for_the_token_then_searches_and_logs_out(self, page,
                                                                    network_server: RunningServer) -> None:
        page.goto(network_server.url + "/")
        login = page.locator("#login")
        login.wait_for()
        assert page.locator("#q").is_hidden() and page.locator("#index-status").is_hidden()
        token_field = page.get_by_label("Access token")
        assert token_field.get_attribute("type") == "password"
        # A wrong token: a clear message, still locked.
        token_field.fill("not-the-token")
        page.get_by_role("button", name="Log in").click()
        error = page.locator("#login-error")
        error.wait_for()
        assert "not this album's access token" in error.inner_text()
        assert error.get_attribute("role") == "alert"
        # The right one: the page reloads with the cookie, and everything works.
        token_field.fill(network_server.token)
        page.get_by_role("button", name="Log in").click()
        page.locator("#q").wait_for()
        assert login.is_hidden()
        cookie = next(c for c in page.context.cookies() if c["name"] == "clipalbum_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert network_server.token not in cookie["value"]
        page.locator("#q").press_sequentially("a cat", delay=30)
        page.locator("#grid li").first.wait_for()
        assert "chelsea.jpg" in result_names(page)[:3]
        first = page.locator("#grid li img").first  # thumbnails come with the cookie too
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first.element_handle())
        page.wait_for_function("() => /indexed/.test(document.getElementById('counts').textContent)")
        # Log out: the cookie is gone and the form is back.
        page.get_by_role("button", name="Log out").click()
        login.wait_for()
        assert not [c for c in page.context.cookies() if c["name"] == "clipalbum_session"]
