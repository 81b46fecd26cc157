"""Finds the model bundle to use (a folder, a cached model id, or the default in the model cache), building the
default one when it is missing and the build extras exist."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from clipalbum.server.bundle import read_manifest
from clipalbum.server.errors import BundleError
from clipalbum.server.model_cache import DEFAULT_MODEL_ID, cached_bundle, is_bundle
from clipalbum.server.settings import DataPaths

log = logging.getLogger(__name__)

# The builder lives in export/ (torch); the server reaches it only by name, only when asked to build.
BUILDER_MODULE = "clipalbum.export.default_bundle"


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


def named_bundle(name: str | Path) -> Path:
    """A bundle folder's path, or the cached bundle of a model id (`--model bootstrap-effnetlite0-minilm-v2`)."""
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute() or len(path.parts) != 1:
        return path
    cached = cached_bundle(str(name))
    return cached if is_bundle(cached) else path  # a missing one fails to load with the path in the message


def _legacy_default(paths: DataPaths) -> Path | None:
    """DATA_DIR/models/default, where data directories kept the default model before the shared cache:
    used where it holds the current default, so an existing install does not build it again."""
    try:
        if read_manifest(paths.legacy_bundle).model_id == DEFAULT_MODEL_ID:
            return paths.legacy_bundle
    except BundleError:
        pass
    return None


def resolve_bundle(paths: DataPaths, model: str | Path | None = None, build_if_missing: bool = True) -> Path:
    """--model, else $CLIPALBUM_MODEL, else the default bundle in the model cache (built on first use)."""
    chosen = model or os.environ.get("CLIPALBUM_MODEL")
    if chosen:
        return named_bundle(chosen)
    if (legacy := _legacy_default(paths)) is not None:
        return legacy
    bundle = cached_bundle(DEFAULT_MODEL_ID)
    if not is_bundle(bundle):
        if not build_if_missing:
            raise BundleError(f"no model bundle at {bundle}; run 'clipalbum model build'")
        if build_extras_installed():
            log.warning("no model bundle at %s: building the default one (a few minutes, once)", bundle)
        build_default_bundle(bundle)  # without the build extras: a BundleError that says what to do
    return bundle
