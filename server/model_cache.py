"""One cache of model bundles shared by every data directory, found by model id, and a record of which data
directory uses which bundle (for `clipalbum model list` and a safe `model remove`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipalbum.server.bundle import MANIFEST_NAME
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.filelock import exclusive

# The offline default: export/default_bundle.py builds it, and checks that it ends in training.bootstrap.RECIPE_VERSION.
DEFAULT_MODEL_ID = "bootstrap-effnetlite0-minilm-v2"
USES_FILE = "data-dirs.json"


def cache_dir() -> Path:
    """$CLIPALBUM_MODEL_CACHE, else $XDG_CACHE_HOME/clipalbum/models, else ~/.cache/clipalbum/models."""
    if env := os.environ.get("CLIPALBUM_MODEL_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "clipalbum" / "models"


def cached_bundle(model_id: str) -> Path:
    """Where the bundle of `model_id` lives in the cache (it may not exist)."""
    if not model_id or model_id in (".", "..") or "/" in model_id or "\\" in model_id or "\0" in model_id:
        raise ClipalbumError(f"{model_id!r} is not a model id")
    return cache_dir() / model_id


def is_bundle(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).is_file()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# -- which data directory uses which bundle -------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    data_dir: str
    model_id: str
    bundle: str
    last_used: str  # ISO 8601, UTC


def _read_uses(path: Path) -> dict[str, dict[str, dict]]:
    """{data directory: {bundle path: {"model_id", "last_used"}}}; anything malformed is left out."""
    try:
        entries = json.loads(path.read_text()).get("data_dirs", {})
    except (OSError, ValueError, AttributeError):
        return {}  # missing or damaged: it is only a record, rebuilt as data directories are used
    if not isinstance(entries, dict):
        return {}
    return {data_dir: {bundle: use for bundle, use in bundles.items() if isinstance(use, dict)}
            for data_dir, bundles in entries.items() if isinstance(bundles, dict)}


def _write_uses(path: Path, entries: dict[str, dict]) -> None:
    """Replaces the record whole (callers hold its lock, so one temporary name is enough)."""
    tmp = path.with_name(f".{USES_FILE}.tmp")
    tmp.write_text(json.dumps({"data_dirs": entries}, indent=1, sort_keys=True))
    tmp.replace(path)


def record_use(data_dir: Path, model_id: str, bundle: Path) -> None:
    """Notes that `data_dir` has searched with `bundle` (every bundle it used is kept, so `model remove`
    protects the index's model after a one-off `--model`). Best effort: a read-only cache loses the note."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    key, bundle_key = str(Path(data_dir).resolve()), str(Path(bundle).resolve())
    path = cache_dir() / USES_FILE
    with contextlib.suppress(OSError), exclusive(path.with_name(f".{USES_FILE}.lock")):
        entries = _read_uses(path)
        known = entries.get(key, {}).get(bundle_key, {})
        if known.get("model_id") == model_id and str(known.get("last_used", "")).startswith(today):
            return  # noted today already: no write at every start
        entries.setdefault(key, {})[bundle_key] = {
            "model_id": model_id, "last_used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_uses(path, entries)


def uses() -> list[Use]:
    """Each bundle each recorded data directory has used, for the data directories that still exist."""
    found = []
    for data_dir, bundles in sorted(_read_uses(cache_dir() / USES_FILE).items()):
        if Path(data_dir).is_dir():
            found += [Use(data_dir=data_dir, model_id=str(use.get("model_id", "")), bundle=bundle,
                          last_used=str(use.get("last_used", ""))) for bundle, use in sorted(bundles.items())]
    return found


def bundle_of_model(data_dir: Path, model_id: str) -> Path | None:
    """A bundle of `model_id` still at hand: the one `data_dir` used last, else the cache's; None if neither."""
    key = str(Path(data_dir).resolve())
    recorded = sorted((u for u in uses() if u.data_dir == key and u.model_id == model_id),
                      key=lambda u: u.last_used, reverse=True)
    candidates = [Path(u.bundle) for u in recorded]
    with contextlib.suppress(ClipalbumError):  # an id that cannot name a cache folder
        candidates.append(cached_bundle(model_id))
    for candidate in candidates:
        if is_bundle(candidate):
            return candidate
    return None


def users_of(bundle: Path, recorded: list[Use] | None = None) -> list[str]:
    """The data directories on record that have used `bundle`."""
    target = Path(bundle).resolve()
    return sorted({u.data_dir for u in (uses() if recorded is None else recorded) if Path(u.bundle) == target})


# -- the bundles in the cache ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedBundle:
    model_id: str
    path: Path
    size_bytes: int
    used_by: list[str] = field(default_factory=list)  # data directories


def cached_bundles() -> list[CachedBundle]:
    folder = cache_dir()
    if not folder.is_dir():
        return []
    recorded = uses()
    found = []
    for bundle in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and is_bundle(p)):
        found.append(CachedBundle(model_id=bundle.name, path=bundle, size_bytes=folder_size(bundle),
                                  used_by=users_of(bundle, recorded)))
    return found


def remove_cached(model_id: str, force: bool = False) -> Path:
    """Deletes the cached bundle of `model_id`; refuses while a data directory uses it, unless `force`."""
    bundle = cached_bundle(model_id)
    if not is_bundle(bundle):
        known = ", ".join(b.model_id for b in cached_bundles()) or "none"
        raise ClipalbumError(f"no model {model_id!r} in {cache_dir()} (cached: {known})")
    users = users_of(bundle)
    if users and not force:
        raise ClipalbumError(f"model {model_id} is used by {', '.join(users)}; remove it anyway with --force "
                             "(the next search or index there builds or asks for a model again)")
    if bundle.is_symlink():  # a bundle linked into the cache: the link goes, what it points to stays
        bundle.unlink()
        return bundle
    # Renamed first, so a half-deleted bundle is never found under its id.
    doomed = bundle.with_name(f".removing-{model_id}-{os.getpid()}")
    os.replace(bundle, doomed)
    shutil.rmtree(doomed)
    return bundle
