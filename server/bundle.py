"""The model bundle: manifest schema, checksum verification and loading (the contract with export/)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import msgspec

from clipalbum.server.errors import BundleError

FORMAT_VERSION = 1
# Version 2 marks a bundle that uses what version 1 readers would silently ignore (msgspec skips unknown
# fields): bilinear resizing (ImageSpec.resample) or padding with another id than 0 (TextSpec.pad_id). Such a
# bundle served by an older clipalbum would give wrong vectors; that one refuses it instead.
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"

ResizeMode = Literal["shortest_crop", "squash"]
Resampling = Literal["bicubic", "bilinear"]  # PIL's filters of those names (antialiased when reducing)


class ImageSpec(msgspec.Struct, frozen=True):
    file: str = "image.onnx"
    size: int = 224  # square input side in pixels
    resize: ResizeMode = "shortest_crop"  # shortest side to `size`, then centre crop
    resample: Resampling = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per channel, on 0..1 pixels
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    input_name: str = "pixels"
    output_name: str = "embedding"
    quantization: Literal["fp32", "int8"] = "fp32"


class TextSpec(msgspec.Struct, frozen=True):
    file: str = "text.onnx"
    tokenizer: str = "tokenizer.json"
    max_length: int = 64  # tokens, including [CLS] and [SEP]
    lowercase: bool = True
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    output_name: str = "embedding"
    quantization: Literal["fp32", "int8"] = "fp32"
    # Pad every query to max_length tokens (with id 0): text towers whose graph has a fixed length (OpenCLIP's
    # adds all 77 position embeddings); False pads a batch to its longest query.
    pad_to_max_length: bool = False
    pad_id: int = 0  # the id padding fills with (SigLIP pads with its end token, 1)


class Manifest(msgspec.Struct, frozen=True):
    format_version: int
    model_id: str  # changes whenever the vectors change; the index re-embeds on a new id
    embed_dim: int
    image: ImageSpec
    text: TextSpec
    normalized: bool = True  # outputs are L2-normalised inside the graphs
    sha256: dict[str, str] = {}  # file name -> hex digest, for every file but the manifest
    description: str = ""
    metrics: dict[str, float] = {}  # what export measured (parity cosines, recall), for information


def format_version(image: ImageSpec, text: TextSpec) -> int:
    """The lowest format version that can express these specs (READABLE_VERSIONS)."""
    return 2 if image.resample != "bicubic" or text.pad_id != 0 else FORMAT_VERSION


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle_dir: Path) -> Manifest:
    """Reads and validates `manifest.json`; raises BundleError with the fix in the message."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"no model bundle at {bundle_dir} (missing {MANIFEST_NAME}); run 'clipalbum model build' "
            "on a machine with the build extras, or copy a bundle directory there"
        )
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except msgspec.DecodeError as exc:
        raise BundleError(f"{path} is not a valid manifest: {exc}") from exc
    if manifest.format_version not in READABLE_VERSIONS:
        raise BundleError(
            f"{path} has format version {manifest.format_version}, this clipalbum reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; upgrade clipalbum, or rebuild the bundle with this "
            "version's 'clipalbum model build', 'clipalbum export' or 'clipalbum model import'"
        )
    return manifest


def verify_bundle(bundle_dir: Path, manifest: Manifest) -> None:
    """Checks that every file the manifest names is present and matches its sha256."""
    needed = {manifest.image.file, manifest.text.file, manifest.text.tokenizer}
    missing = needed - set(manifest.sha256)
    if missing:
        raise BundleError(f"manifest in {bundle_dir} has no checksum for {sorted(missing)}; re-export the bundle")
    for name, expected in manifest.sha256.items():
        path = Path(bundle_dir) / name
        if not path.is_file():
            raise BundleError(f"bundle {bundle_dir} is missing {name}; copy the whole bundle directory again")
        if file_sha256(path) != expected:
            raise BundleError(
                f"bundle file {path} does not match its checksum (corrupt or partial copy); "
                "copy the bundle again or rebuild it"
            )


def write_manifest(bundle_dir: Path, manifest: Manifest) -> None:
    """Writes the manifest last and atomically, so a half-written bundle never looks complete."""
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    tmp.replace(path)


def with_checksums(bundle_dir: Path, manifest: Manifest, files: list[str]) -> Manifest:
    """Returns the manifest with a fresh sha256 for each of `files` in `bundle_dir`."""
    sums = {name: file_sha256(Path(bundle_dir) / name) for name in files}
    return msgspec.structs.replace(manifest, sha256=sums)
