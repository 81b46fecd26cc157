"""`clipalbum demo`: a sample album from photos scikit-image ships, indexed with the default model, served."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from clipalbum.server.errors import ClipalbumError
from clipalbum.server.settings import DataPaths

log = logging.getLogger(__name__)

SAMPLE_ALBUM_DIR = "sample-album"

# scikit-image's real photos (file in skimage/data), and the folder they go to in the sample album.
SAMPLE_PHOTOS: dict[str, str] = {
    "chelsea.png": "pets",
    "coffee.png": "kitchen",
    "astronaut.png": "space",
    "rocket.jpg": "space",
    "hubble_deep_field.jpg": "space/telescope",
    "moon.png": "space/telescope",
    "motorcycle_left.png": "street",
    "camera.png": "street",
    "horse.png": "drawings",
    "page.png": "documents",
    "text.png": "documents",
    "retina.jpg": "science",
    "cell.png": "science",
    "coins.png": "collections",
    "brick.png": "textures",
    "grass.png": "textures",
    "gravel.png": "textures",
}

EXAMPLE_QUERIES = ("a cat", "a cup of coffee", "a rocket", "a motorcycle", "galaxies in space")


def skimage_data_dir() -> Path:
    """scikit-image's data folder, found without importing scikit-image (it is only a source of files)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.origin:
        raise ClipalbumError("the demo's sample photos come from scikit-image, which is not installed; "
                             "pip install 'clipalbum[sample]'")
    return Path(spec.origin).parent / "data"


def assemble_sample_album(target: Path) -> Path:
    """Copies the sample photos into `target` (the package's own files are only read); returns `target`."""
    source = skimage_data_dir()
    copied = 0
    for name, folder in SAMPLE_PHOTOS.items():
        original = source / name
        if not original.is_file():
            log.warning("sample photo %s is missing from %s; skipping it", name, source)
            continue
        destination = target / folder / name
        if destination.is_file() and destination.stat().st_size == original.stat().st_size:
            continue  # already there from an earlier run: leave it (and its mtime) alone
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, destination)
        copied += 1
    if not any(target.rglob("*.*")):
        raise ClipalbumError(f"no sample photos found in {source}; reinstall scikit-image "
                             "(pip install --force-reinstall 'clipalbum[sample]')")
    log.info("sample album %s: %d photos copied", target, copied)
    return target


def run_demo(paths: DataPaths, host: str = "127.0.0.1", port: int = 8000, no_serve: bool = False) -> None:
    """Builds the default model if missing, indexes the sample album with a progress bar, then serves it."""
    from clipalbum.server.app import serve_library
    from clipalbum.server.library import Library
    from clipalbum.server.malloc import limit_malloc_arenas

    limit_malloc_arenas()
    paths.ensure()
    album = assemble_sample_album(paths.root / SAMPLE_ALBUM_DIR)
    count = sum(1 for p in album.rglob("*") if p.is_file())
    print(f"clipalbum demo: {count} sample photos in {album}", flush=True)
    library = Library.open(paths, model=None, roots=[str(album)], build_if_missing=True)
    close = True
    try:
        summary = library.index(progress=True)
        print(f"clipalbum demo: {summary.describe()}", flush=True)
        print("clipalbum demo: try " + ", ".join(f'"{q}"' for q in EXAMPLE_QUERIES), flush=True)
        if no_serve:
            print(f"clipalbum demo: indexed; search with  clipalbum search --data-dir {paths.root} \"a cat\"",
                  flush=True)
            return
        close = serve_library(library, host=host, port=port)
    finally:
        if close:  # else a scan still runs; the process exits and the index resumes at the next start
            library.close()
