"""Finds the model bundle to use, building the default one when it is missing and the build extras exist."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from server.bundle import MANIFEST_NAME
from server.errors import BundleError
from server.settings import DataPaths

log = logging.getLogger(__name__)

# The builder lives in export/ (torch); the server reaches it only by name, only when asked to build.
BUILDER_MODULE = "export.default_bundle"


def build_extras_installed() -> bool:
    try:
        importlib.import_module(BUILDER_MODULE)
    except ImportError:
        return False
    return True


def build_default_bundle(out_dir: Path, force: bool = False, progress: bool = True) -> Path:
    try:
        builder = importlib.import_module(BUILDER_MODULE)
    except ImportError as exc:
        raise BundleError(
            f"cannot build the default model here ({exc}); install the build extras with "
            "pip install 'clipalbum[export]', or build the bundle on another machine with "
            f"'clipalbum model build --out DIR' and copy DIR to {out_dir}"
        ) from exc
    return builder.build_default_bundle(Path(out_dir), force=force, progress=progress)


def resolve_bundle(paths: DataPaths, model: str | Path | None = None, build_if_missing: bool = True) -> Path:
    """--model, else $CLIPALBUM_MODEL, else the data directory's default bundle (built on first use)."""
    chosen = model or os.environ.get("CLIPALBUM_MODEL")
    if chosen:
        return Path(chosen).expanduser()
    bundle = paths.default_bundle
    if not (bundle / MANIFEST_NAME).is_file():
        if not build_if_missing:
            raise BundleError(f"no model bundle at {bundle}; run 'clipalbum model build'")
        if build_extras_installed():
            log.warning("no model bundle at %s: building the default one (a few minutes, once)", bundle)
        build_default_bundle(bundle)  # without the build extras: a BundleError that says what to do
    return bundle
