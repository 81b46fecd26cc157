"""The README's paths as a new user takes them, on this checkout (run by .ci/run after the tests):

1. "Set up and run": `clipalbum demo` in the development environment with an empty data directory and an
   empty model cache builds the default model once, indexes the sample album, and a search finds the cat;
   a second data directory then uses the same cached model without building it again.
2. "On a Raspberry Pi": a wheel of this checkout, installed into a fresh virtual environment with no torch,
   serves a copy of that model over HTTP and answers a search.

Prints one JSON object of what it saw; exits non-zero at the first thing that is not as the README says.

    .venv/bin/python .ci/new_user.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_BIN = Path(sys.executable).parent  # the development environment's bin/ (clipalbum, pip)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"new user: {what}")


def run(command: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    check(done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def fresh_env(work: Path) -> dict[str, str]:
    """The environment of someone who has never run clipalbum: empty data, cache and config homes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPALBUM_")}
    for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        env[name] = str(work / name.lower())
    return env


def readme_demo(work: Path, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    run([str(DEV_BIN / "clipalbum"), "demo", "--no-serve"], env, work)
    demo_s = time.perf_counter() - started
    cache = work / "xdg_cache_home" / "clipalbum" / "models"
    bundles = [p for p in cache.iterdir() if (p / "manifest.json").is_file()]
    check(len(bundles) == 1, f"the demo left {len(bundles)} bundles in {cache}, not one")
    top = run([str(DEV_BIN / "clipalbum"), "search", "a cat", "--k", "1"], env, work).split()
    check(len(top) == 3 and top[2].endswith("chelsea.png"), f"'a cat' found {top}")
    # A second album in another data directory: the cached model serves it, nothing is built.
    album = work / "album"
    album.mkdir()
    sample = work / "xdg_data_home" / "clipalbum" / "sample-album"
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        (photo,) = sample.rglob(name)
        shutil.copy(photo, album / name)
    started = time.perf_counter()
    run([str(DEV_BIN / "clipalbum"), "index", str(album), "-q", "--data-dir", str(work / "second")], env, work)
    second_s = time.perf_counter() - started
    listing = json.loads(run([str(DEV_BIN / "clipalbum"), "model", "list", "--json"], env, work))
    check(len(listing["bundles"]) == 1 and len(listing["bundles"][0]["used_by"]) == 2,
          f"model list: {listing}")
    return {"demo_seconds": round(demo_s, 1), "second_data_dir_index_seconds": round(second_s, 1),
            "bundle": bundles[0].name, "cat": Path(top[2]).name}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def pi_path(work: Path, env: dict[str, str], bundle: Path) -> dict:
    # Built from a copy: setuptools' build/ folder in the checkout could hold files of deleted modules.
    source = work / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", ".cache", ".devpack", ".whl", "*.egg-info", "__pycache__"))
    dist = work / "dist"
    run([str(DEV_BIN / "pip"), "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        env, work)
    (wheel,) = dist.glob("clipalbum-*.whl")
    venv = work / "pi-venv"
    run([sys.executable, "-m", "venv", str(venv)], env, work)
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], env, work)
    modules = run([str(venv / "bin" / "python"), "-c", "import importlib.util as u, json; print(json.dumps("
                   "{m: u.find_spec(m) is not None for m in ('torch', 'timm', 'transformers', 'server', "
                   "'training', 'export', 'clipalbum.server')}))"], env, work)
    found = json.loads(modules)
    check(found == {"torch": False, "timm": False, "transformers": False, "server": False, "training": False,
                    "export": False, "clipalbum.server": True}, f"the base install holds {found}")
    model = work / "copied-model"
    shutil.copytree(bundle, model)
    album = work / "album"
    port = free_port()
    log = (work / "serve.log").open("w")
    server = subprocess.Popen([str(venv / "bin" / "clipalbum"), "serve", "--album", str(album), "--data-dir",
                               str(work / "pi-data"), "--model", str(model), "--port", str(port)],
                              env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status: dict = {}
        while time.monotonic() < deadline:
            check(server.poll() is None, f"serve exited: {(work / 'serve.log').read_text()}")
            try:
                status = get_json(f"{base}/api/status")
                if status["indexed"] == 3 and not status["progress"]["running"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        check(status.get("indexed") == 3, f"the Pi server indexed {status}")
        query = urllib.parse.urlencode({"q": "a cat", "k": 3})
        results = get_json(f"{base}/api/search?{query}")["results"]
        with urllib.request.urlopen(f"{base}/", timeout=10) as page:
            check(b"<html" in page.read().lower(), "the web page is not served from the wheel")
    finally:
        server.terminate()
        server.wait(timeout=30)
    check(results and results[0]["path"] == "chelsea.png", f"'a cat' on the Pi path found {results}")
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    return {"wheel_bytes": wheel.stat().st_size, "venv_mb": round(size / 1e6), "cat": results[0]["path"]}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="clipalbum-new-user-") as tmp:
        work = Path(tmp)
        env = fresh_env(work)
        report = {"readme_demo": readme_demo(work, env)}
        cache = work / "xdg_cache_home" / "clipalbum" / "models"
        report["pi_path"] = pi_path(work, env, cache / report["readme_demo"]["bundle"])
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
