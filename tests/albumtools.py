"""Helpers for the index tests: photos with EXIF, album snapshots, distinct photo variants."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_ORIENTATION = 0x0112


def jpeg_bytes(img: Image.Image, taken_at: str | None = None, orientation: int | None = None,
               quality: int = 90) -> bytes:
    """Encodes `img` as JPEG with an EXIF capture time ("YYYY:MM:DD HH:MM:SS") and orientation if given."""
    exif = Image.Exif()
    if taken_at:
        exif.get_ifd(_EXIF_IFD)[_DATETIME_ORIGINAL] = taken_at
    if orientation:
        exif[_ORIENTATION] = orientation
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def write_variants(source_dir: Path, names: list[str], out_dir: Path, count: int, side: int = 160) -> list[Path]:
    """`count` distinct small JPEGs (different crops of real photos), so no two share a content hash."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(source_dir / n).convert("RGB") for n in names]
    written = []
    for i in range(count):
        img = sources[i % len(sources)]
        shift = i // len(sources)
        w, h = img.size
        box = (shift % max(1, w - side), (shift * 3) % max(1, h - side))
        crop = img.crop((box[0], box[1], box[0] + min(side, w), box[1] + min(side, h)))
        path = out_dir / f"{i // 50:02d}" / f"photo_{i:04d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(jpeg_bytes(crop, taken_at=f"2020:01:{1 + i % 28:02d} 10:00:00"))
        written.append(path)
    return written


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `folder` (hidden ones too): (size, mtime_ns, sha256), to prove nothing was written."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns,
                                                       hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[str(path.relative_to(folder))] = (0, 0, "dir-or-link")
    return out
