"""Reading a photo to enhance and writing the result: upright pixels in; the same size, EXIF (orientation
reset) and ICC profile out where the format allows, written atomically and never over an existing file
unless asked."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from clipalbum.server.errors import ClipalbumError, ImageDecodeError
from clipalbum.server.preprocess import DecodedPhoto, _decode_errors, decode_photo, open_photo

# Formats written as themselves with `--format same`; anything else (GIF, HEIC, ...) becomes PNG or JPEG.
WRITABLE = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
_ORIENTATION = 0x0112


@dataclass
class SourcePhoto:
    pixels: npt.NDArray[np.uint8]  # (H, W, 3), upright
    format: str  # PIL's name for the file's format
    grey: bool  # one channel in the file: written back as grey
    alpha: npt.NDArray[np.uint8] | None  # (H, W), upright, when the file has transparency
    exif: bytes | None  # with the orientation reset, since the pixels are upright now
    icc: bytes | None


def read_photo(path: Path, label: str | None = None) -> SourcePhoto:
    """Raises ImageDecodeError (a ClipalbumError) with the reason for anything that is not a readable photo,
    after `label` (default: the path; an uploaded file's name, so that no server path reaches a client)."""
    prefix = f"{label or path}: "
    with open(path, "rb") as data, open_photo(data, prefix=prefix) as header:
        fmt, mode = header.format or "PNG", header.mode
        icc = header.info.get("icc_profile")
        exif = header.getexif()
        if _ORIENTATION in exif:
            exif[_ORIENTATION] = 1
        exif_bytes = exif.tobytes() if len(exif) else None
        alpha = None
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in header.info):
            with _decode_errors(prefix):
                alpha = np.asarray(ImageOps.exif_transpose(header.convert("RGBA")).getchannel("A"))
    decoded = _decode(path, prefix, min_side=1 << 30)  # no reduction: full size
    return SourcePhoto(np.asarray(decoded.image), fmt, mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L", "1"),
                       alpha, exif_bytes, icc if isinstance(icc, bytes) else None)


def read_preview(path: Path, long_side: int, label: str | None = None) -> SourcePhoto:
    """The photo at most `long_side` pixels on its long side, upright RGB, for a screen: JPEGs decode at a
    reduced DCT scale, so a 12 MP original costs a fraction of a full decode. Transparency and EXIF are
    dropped (a preview is shown, not saved); the ICC profile is kept, so that colours show right."""
    prefix = f"{label or path}: "
    with open(path, "rb") as data, open_photo(data, prefix=prefix) as header:
        short, long = sorted(header.size)
        icc = header.info.get("icc_profile")
    decoded = _decode(path, prefix, min_side=math.ceil(long_side * short / long))
    image = decoded.image
    if max(image.size) > long_side:
        image.thumbnail((long_side, long_side), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return SourcePhoto(np.asarray(image), "JPEG", False, None, None, icc if isinstance(icc, bytes) else None)


def _decode(path: Path, prefix: str, min_side: int) -> DecodedPhoto:
    """decode_photo's errors carry `prefix` rather than the path (an upload's path is the server's business):
    the file is opened here and handed over, so no message names it."""
    with open(path, "rb") as data:
        try:
            return decode_photo(data, min_side=min_side)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{prefix}{exc}") from exc


def output_format(source_format: str, requested: str, has_alpha: bool) -> tuple[str, str]:
    """(PIL format, file suffix) for --format same|jpeg|png."""
    if requested == "jpeg":
        return "JPEG", ".jpg"
    if requested == "png":
        return "PNG", ".png"
    if requested != "same":
        raise ClipalbumError(f"--format must be same, jpeg or png, not {requested!r}")
    if source_format in WRITABLE and not (has_alpha and source_format in ("JPEG", "BMP")):
        return source_format, WRITABLE[source_format]
    return ("PNG", ".png") if has_alpha or source_format == "GIF" else ("JPEG", ".jpg")


def to_image(result: npt.NDArray[np.uint8], source: SourcePhoto, fmt: str) -> Image.Image:
    image = Image.fromarray(result)
    if source.grey:
        image = image.convert("L")
    if source.alpha is not None and fmt != "JPEG":
        image.putalpha(Image.fromarray(source.alpha))
    return image


def icc_fits(icc: bytes, mode: str) -> bool:
    """The profile describes the colour space of an image in `mode` (its header's data colour space): a CMYK
    original's profile on the RGB result, or a grey one's on an RGB preview, would misrender it."""
    space = icc[16:20]
    return space == (b"GRAY" if mode in ("L", "LA") else b"RGB ")


def write_photo(image: Image.Image, source: SourcePhoto, target: Path, fmt: str, overwrite: bool) -> None:
    """Writes to a hidden file beside `target`, then moves it into place: an interrupted run leaves no
    half-written photo, and an existing file stays unless `overwrite`."""
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    options: dict[str, object] = {}
    if source.icc and fmt in ("JPEG", "PNG", "WEBP", "TIFF") and icc_fits(source.icc, image.mode):
        options["icc_profile"] = source.icc
    if source.exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["exif"] = source.exif
    if fmt == "JPEG":
        options.update(quality=95, subsampling=0)
    elif fmt == "WEBP":
        options.update(quality=95)
    try:
        image.save(partial, format=fmt, **options)
        if overwrite:
            os.replace(partial, target)
        else:
            os.link(partial, target)  # fails if something appeared there meanwhile: nothing is replaced
            partial.unlink()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
