"""Weighs the web client in a real Chromium: bytes of the page's own files, first and repeat visit; prints JSON.

    python -m bench.web_page --model BUNDLE [--album DIR | --sample-album] [--query "a cat"] [--screenshot PNG]

Run as a module from the repository root: it builds its album and starts its server with the browser tests'
own helpers (tests/browser/conftest.py), so the page it weighs is the one they test. Starts `clipalbum serve` on a free loopback port (over DIR, or an empty album), loads the page, and reads the
browser's Resource Timing entries. With --query it also searches, counts the thumbnails' bytes, and can save a
screenshot of the results (palette PNG, for the README).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, make_album, start_server
    from tests.conftest import skimage_data_dir
except ModuleNotFoundError as exc:  # `python bench/web_page.py`: the repository root is not on the path
    sys.exit(f"run it from the repository root as a module: python -m bench.web_page ... ({exc})")

# More of scikit-image's pictures, so the screenshot's album is not only the nine test photos.
EXTRA_PHOTOS = ("motorcycle_right.png", "horse.png", "camera.png", "moon.png", "coins.png", "brick.png",
                "grass.png", "ihc.png", "clock_motion.png", "cell.png", "logo.png", "color.png")

# Resource Timing for everything the page fetched, split into its own files and API calls.
RESOURCES_JS = """() => performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))
  .map(e => ({ url: e.name, transfer: e.transferSize, encoded: e.encodedBodySize, decoded: e.decodedBodySize }))"""


def own_files(entries: list[dict]) -> list[dict]:
    return [e for e in entries if "/api/" not in e["url"] and "/health" not in e["url"]]


def summarise(entries: list[dict]) -> dict:
    return {"files": len(entries), "transfer_bytes": sum(e["transfer"] for e in entries),
            "body_bytes": sum(e["decoded"] for e in entries)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model bundle directory")
    parser.add_argument("--album", help="album folder (default: an empty one)")
    parser.add_argument("--sample-album", action="store_true", help="use the browser tests' sample album, "
                        "plus more of scikit-image's pictures")
    parser.add_argument("--query", help="search this after loading, and weigh the thumbnails")
    parser.add_argument("--screenshot", help="save a PNG of the page (needs --query)")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=760)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    web = REPO / "web"
    source_bytes = {p.name: p.stat().st_size for p in sorted(web.iterdir()) if p.is_file()}
    gzipped = sum(len(gzip.compress(p.read_bytes(), 9)) for p in web.iterdir() if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        album = Path(args.album) if args.album else Path(tmp) / "album"
        album.mkdir(exist_ok=True)
        if args.sample_album:
            make_album(album, corrupt=False)
            for name in EXTRA_PHOTOS:
                source = skimage_data_dir() / name
                if source.is_file():
                    (album / "more").mkdir(exist_ok=True)
                    (album / "more" / name).write_bytes(source.read_bytes())
        server = start_server(album, Path(tmp) / "data", Path(args.model))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_context(viewport={"width": args.width, "height": args.height}).new_page()
                page.goto(server.url + "/", wait_until="networkidle")
                first = own_files(page.evaluate(RESOURCES_JS))
                page.reload(wait_until="networkidle")  # a repeat visit: the browser revalidates with ETags
                repeat = own_files(page.evaluate(RESOURCES_JS))
                report = {
                    "source_bytes": sum(source_bytes.values()), "source_gzip9_bytes": gzipped,
                    "per_file_bytes": source_bytes,
                    "first_visit": summarise(first), "repeat_visit": summarise(repeat),
                }
                if args.query:
                    page.locator("#q").fill(args.query)
                    page.locator("#q").press("Enter")
                    page.locator("#grid li").first.wait_for()
                    page.wait_for_load_state("networkidle")
                    page.wait_for_function("() => [...document.querySelectorAll('#grid img')].filter(i => "
                                           "i.getBoundingClientRect().top < innerHeight).every(i => i.complete)")
                    thumbs = [e for e in page.evaluate(RESOURCES_JS) if "/thumbnail" in e["url"]]
                    report["query"] = {"text": args.query, "results": page.locator("#grid li").count(),
                                       "thumbnails_loaded": len(thumbs),
                                       "thumbnail_bytes": sum(e["encoded"] for e in thumbs)}
                    if args.screenshot:
                        page.mouse.move(0, 0)
                        time.sleep(0.3)
                        save_screenshot(page.screenshot(), Path(args.screenshot))
                        report["screenshot"] = {"path": args.screenshot,
                                                "bytes": Path(args.screenshot).stat().st_size}
                browser.close()
        finally:
            server.stop()
    print(json.dumps(report, indent=2))
    return 0


def save_screenshot(png: bytes, target: Path) -> None:
    """A 256-colour PNG: photos dither well and the file stays a fraction of the full-colour size."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    target.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        target, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
