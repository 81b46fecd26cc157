"""Photo decoding and model-input preprocessing: the one implementation shared by serving and training."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from server.bundle import ImageSpec
from server.errors import ImageDecodeError

try:  # HEIC/HEIF support is an optional extra (clipalbum[heif]).
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:
    HEIF_SUPPORTED = False

# A decompression-bomb guard: 100 MP covers every camera in a home album (a 45 MP full frame,
# large panoramas) and refuses crafted files that would take gigabytes to decode.
MAX_PIXELS = 100_000_000

PHOTO_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | ({".heic", ".heif"} if HEIF_SUPPORTED else set())
)

# PIL's messages for in-memory data include the buffer's repr, which tells a person nothing.
_FILE_OBJECT_REPR = re.compile(r" ?<_io\.\w+ object at 0x[0-9a-fA-F]+>")

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132


@dataclass(frozen=True)
class DecodedPhoto:
    image: Image.Image  # RGB, upright, possibly reduced by DCT scaling (short side >= min_side)
    width: int  # of the original, after EXIF orientation
    height: int
    taken_at: str | None  # EXIF capture time as ISO 8601 (local time, no zone), if recorded


def _exif_time(img: Image.Image) -> str | None:
    try:
        exif = img.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        if not raw:
            return None
        return datetime.strptime(str(raw).strip("\x00 ").strip(), "%Y:%m:%d %H:%M:%S").isoformat()
    except (ValueError, TypeError, KeyError, OSError):
        return None  # missing or malformed EXIF is common and never fatal


def decode_photo(
    source: Path | str | bytes | BinaryIO, min_side: int = 256, max_pixels: int = MAX_PIXELS
) -> DecodedPhoto:
    """Opens a photo for embedding: refuses bombs, scales JPEGs while decoding, applies EXIF orientation.

    Raises ImageDecodeError with the reason for anything that is not a readable photo, prefixed with the
    file's path when `source` is one (in-memory data gets the bare reason).
    """
    prefix = f"{source}: " if isinstance(source, (str, Path)) else ""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{prefix}{width}x{height} is {width * height / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP limit"
                )
            orientation = img.getexif().get(0x0112, 1)
            if orientation in (5, 6, 7, 8):  # rotated 90 degrees: the upright size is swapped
                width, height = height, width
            taken_at = _exif_time(img)
            if img.format == "JPEG":
                # DCT scaling: decode at 1/2, 1/4 or 1/8 size while keeping the short side >= min_side.
                scale = min(img.size) / max(min_side, 1)
                img.draft("RGB", (int(img.size[0] / scale) + 1, int(img.size[1] / scale) + 1))
            img.seek(0)  # first frame of GIF/WebP animations and multi-page TIFFs
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = _FILE_OBJECT_REPR.sub("", str(exc))
        raise ImageDecodeError(f"{prefix}not a supported image ({exc.__class__.__name__}: {reason})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"{prefix}unreadable image ({_FILE_OBJECT_REPR.sub('', str(exc))})") from exc
    return DecodedPhoto(image=img, width=width, height=height, taken_at=taken_at)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent areas read as white
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG/TIFF: scale to 8 bit
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def resize_for_model(img: Image.Image, spec: ImageSpec) -> Image.Image:
    """Resizes (and crops) to the model's square input, as the bundle's manifest says."""
    size = spec.size
    if spec.resize == "squash":
        return img.resize((size, size), Image.Resampling.BICUBIC)
    if spec.resize == "shortest_crop":
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return img.crop((left, top, left + size, top + size))
    raise ValueError(f"unknown resize mode {spec.resize!r} in the bundle manifest")


def to_model_input(img: Image.Image, spec: ImageSpec) -> npt.NDArray[np.float32]:
    """Returns the (3, size, size) float32 array the image encoder takes."""
    arr = np.asarray(resize_for_model(img, spec), dtype=np.float32) / 255.0  # (H, W, 3)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1))  # (3, H, W)


def load_model_input(source: Path | str | bytes | BinaryIO, spec: ImageSpec) -> npt.NDArray[np.float32]:
    """decode_photo + to_model_input, for callers that need only the pixels."""
    return to_model_input(decode_photo(source, min_side=spec.size).image, spec)
