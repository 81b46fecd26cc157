"""The enhancer's manifest: what export writes and the runtime checks (no torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import msgspec

from clipalbum.server.bundle import file_sha256
from clipalbum.server.errors import BundleError
from clipalbum.server.pathnames import for_terminal

ENHANCER_FORMAT_VERSION = 1
MANIFEST_NAME = "enhancer.json"

Precision = Literal["fp32", "int8"]
# The enhancer that ships inside the package (export writes this layout).
PACKAGED_ENHANCER = Path(__file__).parent / "model"


class EnhancerManifest(msgspec.Struct, frozen=True):
    format_version: int
    model_id: str
    conditioning_model_id: str  # the search bundle whose embeddings it was trained with
    embed_dim: int
    thumb: int  # the head's square input
    multiple: int  # the UNet's input sides must divide by this
    residual_scale: float
    alphas_cumprod: list[float]  # the diffusion schedule, per training timestep
    unet: dict[str, str]  # precision -> file
    head: str
    default_precision: Precision
    tile: int = 512  # pixels per tile side (the core), plus `overlap` context on every side
    overlap: int = 32
    sha256: dict[str, str] = {}
    metrics: dict[str, float] = {}
    description: str = ""


def read_enhancer_manifest(directory: Path, verify: bool = True) -> EnhancerManifest:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{directory} holds no enhancer ({MANIFEST_NAME} missing); "
                          "export one with `clipalbum enhance export RUN DIR`")
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=EnhancerManifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleError(f"{path} is not a valid enhancer manifest: {exc}") from exc
    if manifest.format_version != ENHANCER_FORMAT_VERSION:
        raise BundleError(f"{path} is enhancer format {manifest.format_version}; this clipalbum reads "
                          f"{ENHANCER_FORMAT_VERSION}: export it again with this version")
    if verify:
        for name, digest in manifest.sha256.items():
            file = Path(directory) / name
            if not file.is_file() or file_sha256(file) != digest:
                raise BundleError(f"{file} is missing or damaged (checksum mismatch); export the enhancer again")
    return manifest


def write_enhancer_manifest(directory: Path, manifest: EnhancerManifest) -> None:
    files = sorted({*manifest.unet.values(), manifest.head})
    manifest = msgspec.structs.replace(manifest, sha256={f: file_sha256(Path(directory) / f) for f in files})
    data = json.loads(msgspec.json.encode(manifest))
    (Path(directory) / MANIFEST_NAME).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def enhancer_dir(given: str | None) -> Path:
    """--enhancer, else $CLIPALBUM_ENHANCER, else the packaged one."""
    chosen = given or os.environ.get("CLIPALBUM_ENHANCER")
    path = Path(chosen).expanduser() if chosen else PACKAGED_ENHANCER
    if not (path / MANIFEST_NAME).is_file():
        where = "this clipalbum has no packaged enhancer" if not chosen else f"{for_terminal(str(path))} holds no enhancer"
        raise BundleError(f"{where}; pass --enhancer DIR (made by `clipalbum enhance export RUN DIR`)")
    return path
