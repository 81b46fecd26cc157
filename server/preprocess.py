"""Photo decoding and model-input preprocessing: the one implementation shared by serving and training."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from clipalbum.server.bundle import ImageSpec
from clipalbum.server.decode_budget import DECODE_BUDGET
from clipalbum.server.errors import ImageDecodeError

try:  # HEIC/HEIF support is an optional extra (clipalbum[heif]).
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:
    HEIF_SUPPORTED = False

# A decompression-bomb guard: 100 MP covers every camera in a home album (a 45 MP full frame,
# large panoramas) and refuses crafted files that would take gigabytes to decode.
MAX_PIXELS = 100_000_000
# PIL has its own bomb check inside Image.open: a warning over Image.MAX_IMAGE_PIXELS (89.5 MP by default),
# which refused 95 MP photos, and an error over twice that. Ours must decide, at MAX_PIXELS, with our message;
# PIL's stays as a backstop above it (a warning over 200 MP, an error over 400 MP, also on GIF frames and
# TIFF tiles). Set once at import: toggling warning filters per call is not thread-safe.
PIL_BACKSTOP_PIXELS = 2 * MAX_PIXELS
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < PIL_BACKSTOP_PIXELS:
    Image.MAX_IMAGE_PIXELS = PIL_BACKSTOP_PIXELS
# Images are box-reduced after decoding while the short side stays this many times the size asked for;
# the model input's resize uses the same gap.
REDUCING_GAP = 3.0

PHOTO_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | ({".heic", ".heif"} if HEIF_SUPPORTED else set())
)

# PIL's messages for file objects include their repr, which tells a person nothing (and an open file's names
# a path on the server, which a client must not read).
_FILE_OBJECT_REPR = re.compile(r""" ?<_io\.\w+ (?:object at 0x[0-9a-fA-F]+|name=(?:'[^']*'|"[^"]*"|\d+))>""")

_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")
# Bytes per pixel in PIL's memory (RGB takes 4), and for the modes that must widen before reducing.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_WIDENED_BYTES = {"1": 1, "P": 4, "PA": 4, "I;16": 4, "I;16L": 4, "I;16B": 4, "I;16N": 4}

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132


@dataclass(frozen=True)
class DecodedPhoto:
    image: Image.Image  # RGB, upright, possibly reduced (DCT scaling, box reduction; short side >= min_side)
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


def open_photo(source: Path | str | BinaryIO, max_pixels: int = MAX_PIXELS, prefix: str = "") -> Image.Image:
    """Identifies a photo from its header alone (Image.open reads no pixels) and applies the pixel limit.

    Raises ImageDecodeError for anything that is not a supported image or is over `max_pixels`.
    """
    with _decode_errors(prefix):
        return _open_within_limit(source, max_pixels, prefix)


def decode_photo(
    source: Path | str | bytes | BinaryIO, min_side: int = 256, max_pixels: int = MAX_PIXELS,
    wait: float | None = None,
) -> DecodedPhoto:
    """Opens a photo for embedding: refuses bombs from the header, scales it while decoding (DCT scaling for
    JPEGs, a box reduction right after decoding for the others), applies EXIF orientation.

    The decode holds its estimated memory from the process's DECODE_BUDGET, waiting at most `wait`
    seconds for it (None: as long as it takes; ServerBusyError when the wait runs out).
    Raises ImageDecodeError with the reason for anything that is not a readable photo, prefixed with the
    file's path when `source` is one (in-memory data gets the bare reason).
    """
    prefix = f"{source}: " if isinstance(source, (str, Path)) else ""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with _decode_errors(prefix):
        img = _open_within_limit(source, max_pixels, prefix)
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):  # rotated 90 degrees: the upright size is swapped
            width, height = height, width
        taken_at = _exif_time(img)
        if img.format == "JPEG":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 size while keeping the short side >= min_side.
            scale = min(img.size) / max(min_side, 1)
            img.draft("RGB", (int(img.size[0] / scale) + 1, int(img.size[1] / scale) + 1))
        img.seek(0)  # first frame of GIF/WebP animations and multi-page TIFFs
        factor = _reduce_factor(img.size, min_side)
        with DECODE_BUDGET.reserve(_decode_bytes(img, factor), timeout=wait):
            img.load()
            img = _reduce(img, factor)  # before any RGB copy: a grey 81 MP PNG stays 81 MB, not 405
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
    return DecodedPhoto(image=img, width=width, height=height, taken_at=taken_at)


@contextmanager
def _decode_errors(prefix: str) -> Iterator[None]:
    """Turns what PIL raises for a bad file into ImageDecodeError with a reason a person can read."""
    try:
        yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # PIL's backstop, above ours
        pixels = _PIL_PIXELS.search(str(exc))
        size = f"{math.ceil(int(pixels.group(1)) / 1e6)} MP" if pixels else f"over {PIL_BACKSTOP_PIXELS // 10**6} MP"
        raise ImageDecodeError(f"{prefix}{size}, over the {MAX_PIXELS / 1e6:.0f} MP limit") from exc
    except UnidentifiedImageError as exc:
        reason = _FILE_OBJECT_REPR.sub("", str(exc))
        raise ImageDecodeError(f"{prefix}not a supported image ({exc.__class__.__name__}: {reason})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"{prefix}unreadable image ({_FILE_OBJECT_REPR.sub('', str(exc))})") from exc


def _open_within_limit(source: Path | str | BinaryIO, max_pixels: int, prefix: str) -> Image.Image:
    img = Image.open(source)  # lazy: reads the header only
    width, height = img.size
    if width * height > max_pixels:
        if isinstance(source, (str, Path)):
            img.close()  # PIL opened this file itself (a caller's file object stays the caller's to close)
        raise ImageDecodeError(f"{prefix}{width}x{height} is {math.ceil(width * height / 1e6)} MP, "
                               f"over the {max_pixels / 1e6:.0f} MP limit")
    return img


def _reduce_factor(size: tuple[int, int], min_side: int) -> int:
    """The whole factor a decoded image can be box-reduced by and still keep REDUCING_GAP x min_side on its
    short side: the reduction the model input's resize (reducing_gap) and thumbnails would make anyway."""
    return max(1, int(min(size) / (REDUCING_GAP * max(min_side, 1))))


def _decode_bytes(img: Image.Image, factor: int) -> int:
    """Memory a decode holds at its peak: the decoded pixels (PIL keeps RGB in 4 bytes), a widened copy
    when reducing needs one, and the RGB and upright copies of the reduced image."""
    pixels = img.size[0] * img.size[1]
    native = pixels * _BYTES_PER_PIXEL.get(img.mode, 4)
    widened = pixels * _WIDENED_BYTES.get(img.mode, 0) if factor > 1 else 0
    return native + widened + 2 * 4 * pixels // (factor * factor)


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    if factor < 2:
        return img
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA"):  # palette indices can't be averaged
        img = _to_rgb(img)
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    try:
        return img.reduce(factor)
    except ValueError:  # a mode reduce() does not take: keep it whole (the budget counted it so)
        return img


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


RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resize_for_model(img: Image.Image, spec: ImageSpec) -> Image.Image:
    """Resizes (and crops) to the model's square input, as the bundle's manifest says."""
    size = spec.size
    resample = RESAMPLING[spec.resample]
    if spec.resize == "squash":
        return img.resize((size, size), resample)
    if spec.resize == "shortest_crop":
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), resample, reducing_gap=REDUCING_GAP)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return img.crop((left, top, left + size, top + size))
    raise ValueError(f"unknown resize mode {spec.resize!r} in the bundle manifest")


def to_model_input(img: Image.Image, spec: ImageSpec) -> npt.NDArray[np.float32]:
    """Returns the (3, size, size) float32 array the image encoder takes."""
    arr = np.asarray(resize_for_model(img, spec), dtype=np.float32) / 255.0  # (H, W, 3)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1))  # (3, H, W)


def load_model_input(source: Path | str | bytes | BinaryIO, spec: ImageSpec,
                     wait: float | None = None) -> npt.NDArray[np.float32]:
    """decode_photo + to_model_input, for callers that need only the pixels."""
    return to_model_input(decode_photo(source, min_side=spec.size, wait=wait).image, spec)
