"""The installed package is clipalbum.server / .training / .export: every package folder is mapped, nothing
imports the bare names, and the bare names are not importable where a user runs clipalbum."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

FOLDERS = ("server", "training", "export")
BARE_IMPORT = re.compile(r"^\s*(?:from|import) (?:server|training|export)\b", re.M)
BARE_MODULE_STRING = re.compile(r"[\"'](?:-m )?(?:server|training|export)\.[a-z_]+(?:\.[a-z_]+)*[\"']")


def tracked(*patterns: str) -> list[Path]:
    done = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return [REPO / name for name in done.stdout.split()]


def test_every_package_folder_is_installed_under_clipalbum() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {f"clipalbum.{name}": name for name in FOLDERS}
    folders = sorted(init.parent.relative_to(REPO) for name in FOLDERS for init in (REPO / name).rglob("__init__.py"))
    assert sorted(setuptools["packages"]) == sorted("clipalbum." + ".".join(f.parts) for f in folders)


def test_nothing_imports_the_bare_names() -> None:
    offenders = []
    for path in tracked("*.py"):
        text = path.read_text()
        offenders += [f"{path.relative_to(REPO)}: {m.group(0).strip()}" for m in BARE_IMPORT.finditer(text)]
        offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in BARE_MODULE_STRING.finditer(text)
                      if not m.group(0).rstrip("\"'").endswith((".py", ".toml", ".json", ".onnx", ".md", ".sh"))]
    assert offenders == []


def test_the_installed_names_resolve_outside_the_checkout(tmp_path: Path) -> None:
    """From any other folder (as a user runs it), clipalbum.* imports and the bare names are not there."""
    probe = ("import importlib.util as u, json; print(json.dumps({m: getattr(u.find_spec(m), 'origin', None) for m "
             "in ('clipalbum.server.cli', 'clipalbum.training', 'clipalbum.export', 'server', 'training', 'export')}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["clipalbum.server.cli"] == str(REPO / "server" / "cli.py")
    assert found["clipalbum.training"] == str(REPO / "training" / "__init__.py")
    assert found["clipalbum.export"] == str(REPO / "export" / "__init__.py")
    assert [found[name] for name in FOLDERS] == [None, None, None]
