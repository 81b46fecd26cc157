"""The server (app, CLI, library) never imports torch or its friends: a Pi runs it with the base install."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

FORBIDDEN = ("torch", "timm", "transformers", "torchvision", "diffusers", "optimum")
SERVER_MODULES = tuple(f"clipalbum.server.{name}" for name in (
    "app", "api", "cli", "library", "thumbnails", "demo",
    "enhance.cli", "enhance.runtime", "enhance.evaluate", "enhance.photoio", "enhance.conditioning"))


def test_server_modules_import_without_torch() -> None:
    probe = (
        "import importlib, json, sys\n"
        f"for name in {SERVER_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "from clipalbum.server.cli import build_parser\n"
        "build_parser()\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"server modules pulled in {loaded}"


def test_the_probe_would_notice_torch() -> None:
    """The same check run after importing torch reports it, so the test above can fail."""
    probe = ("import json, sys, torch\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        import pytest

        pytest.skip("torch is not installed here")
    assert "torch" in json.loads(done.stdout.strip().splitlines()[-1])
