"""Gathers the shipped enhancer's training photos (training/enhance/free_photos.toml) into one folder.

Debian packages come through `apt-get download` (a Debian or Ubuntu machine with bookworm's archive);
PyPI photos from the installed packages. Originals are copied byte for byte, with a NOTICE.md of
authors and licences beside them.

    python -m clipalbum.training.enhance.fetch_photos OUT_DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

LIST = Path(__file__).with_name("free_photos.toml")


def read_list(path: Path = LIST) -> list[dict[str, str]]:
    return tomllib.loads(path.read_text(encoding="utf-8"))["photo"]


def _site_file(relative: str) -> Path:
    top = relative.split("/", 1)[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{relative}: the package {top} is not installed")
    return Path(list(spec.submodule_search_locations)[0]).parent / relative


def fetch(out_dir: Path) -> list[Path]:
    photos = read_list()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        debs = sorted({(p["package"], p["version"]) for p in photos if not p["package"].startswith("pypi:")})
        for package, version in debs:
            print(f"apt-get download {package}={version}", file=sys.stderr)
            subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=work, check=True,
                           stdout=subprocess.DEVNULL)
        for deb in work.glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(work / "root")], check=True)
        for photo in photos:
            source = (_site_file(photo["path"]) if photo["package"].startswith("pypi:")
                      else work / "root" / photo["path"])
            target = out_dir / f"{photo['name']}{source.suffix.lower()}"
            shutil.copyfile(source, target)
            written.append(target)
    write_notice(out_dir / "NOTICE.md", photos)
    return written


def write_notice(path: Path, photos: list[dict[str, str]] | None = None) -> None:
    """Who made each photo and under which terms: travels with the photos and with weights trained on them."""
    lines = ["# The training photos and their terms", "",
             "| photo | what | author | licence | from |", "| --- | --- | --- | --- | --- |"]
    for photo in photos or read_list():
        lines.append(f"| {photo['name']} | {photo['what']} | {photo['author']} | {photo['licence']} | "
                     f"{photo['package']} {photo['version']} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    print(f"{len(fetch(args.out_dir))} photos in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
