"""The vector index's file: written atomically in chunks, read back only when every byte checks out.

Layout: MAGIC, a little-endian u32 header length, a JSON header (format, ndim, count, lists, crc32), then
keys (u64), list numbers (i32), scales (f32), centroids (f32, lists x ndim) and codes (i8, count x ndim).
The crc32 covers everything after the header, so a truncated or damaged file means a rebuild, never wrong
answers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

MAGIC = b"CLIPALBUM-IVF\n"
FORMAT = 1
CHUNK_ROWS = 65_536  # rows written per write call: the whole code matrix never has a second copy


@dataclass
class IndexArrays:
    """What the file holds: the live vectors of the index, row by row."""

    ndim: int
    keys: npt.NDArray[np.uint64]
    lists: npt.NDArray[np.int32]  # each row's inverted list
    scales: npt.NDArray[np.float32]  # 1 / |code|: turns an int8 dot product into a cosine
    centroids: npt.NDArray[np.float32]
    codes: npt.NDArray[np.int8]


def write_index(path: Path, ndim: int, rows: npt.NDArray[np.int64], keys: npt.NDArray[np.uint64],
                lists: npt.NDArray[np.int32], scales: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32],
                codes: npt.NDArray[np.int8]) -> None:
    """Writes the `rows` of the slot arrays to `path` atomically: a temporary file, fsync, rename, fsync of
    the folder. A full disk fails before anything is replaced."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = len(rows)
    payload = count * (8 + 4 + 4 + ndim) + centroids.nbytes
    try:
        with open(tmp, "wb") as f:
            _reserve(f, payload + 4096)
            crc = 0
            header_at = f.tell()
            f.write(_header(ndim, count, len(centroids), crc))  # rewritten with the crc at the end
            for array in (keys, lists, scales):
                crc = _write_rows(f, array, rows, crc)
            crc = _write(f, np.ascontiguousarray(centroids, dtype=np.float32), crc)
            crc = _write_rows(f, codes, rows, crc)
            f.truncate(f.tell())
            f.seek(header_at)
            f.write(_header(ndim, count, len(centroids), crc))  # the same length: see _header
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial file on a full disk would only take more of it
        raise
    _fsync_folder(path.parent)


def read_index(path: Path, ndim: int) -> IndexArrays | None:
    """The file's arrays; None when it is missing, damaged, of another format or of another dimension."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError("not a clipalbum vector index")
            (length,) = struct.unpack("<I", f.read(4))
            header = json.loads(f.read(length))
            if header.get("format") != FORMAT:
                raise ValueError(f"format {header.get('format')}, this version reads {FORMAT}")
            if header["ndim"] != ndim:
                log.info("vector index %s has %s dims, the model has %d; it will be rebuilt", path,
                         header["ndim"], ndim)
                return None
            count, lists = int(header["count"]), int(header["lists"])
            crc = [0]

            def read(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
                # np.empty, not bytearray: zero-filling 256 MB would hold the GIL (and searches) for 0.2 s
                data = np.empty(shape, dtype=dtype)
                view = memoryview(data).cast("B")
                if f.readinto(view) != data.nbytes:
                    raise ValueError("the file is truncated")
                crc[0] = zlib.crc32(view, crc[0])
                return data

            arrays = IndexArrays(ndim, read(np.uint64, (count,)), read(np.int32, (count,)),
                                 read(np.float32, (count,)), read(np.float32, (lists, ndim)),
                                 read(np.int8, (count, ndim)))
            if f.read(1):
                raise ValueError("the file has trailing bytes")
        if f"{crc[0]:08x}" != header["crc32"]:
            raise ValueError("checksum mismatch")
        if count and (arrays.lists.min() < 0 or arrays.lists.max() >= lists):
            raise ValueError("list numbers out of range")
        return arrays
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        log.warning("cannot read the vector index %s (%s); it will be rebuilt", path, exc)
        return None


def _header(ndim: int, count: int, lists: int, crc: int) -> bytes:
    # The crc is 8 hex digits, so the header keeps its length when it is rewritten with it.
    text = json.dumps({"format": FORMAT, "ndim": ndim, "count": count, "lists": lists, "crc32": f"{crc:08x}"})
    text = text.encode()
    return MAGIC + struct.pack("<I", len(text)) + text


def _write(f: BinaryIO, array: np.ndarray, crc: int) -> int:
    data = memoryview(np.ascontiguousarray(array)).cast("B")
    f.write(data)
    return zlib.crc32(data, crc)


def _write_rows(f: BinaryIO, array: np.ndarray, rows: npt.NDArray[np.int64], crc: int) -> int:
    for start in range(0, len(rows), CHUNK_ROWS):
        crc = _write(f, array[rows[start:start + CHUNK_ROWS]], crc)
    return crc


def _reserve(f: BinaryIO, size: int) -> None:
    """Allocates `size` bytes up front, so a full disk fails here with ENOSPC (a clear error)."""
    if not hasattr(os, "posix_fallocate"):  # macOS
        return
    try:
        os.posix_fallocate(f.fileno(), 0, max(1, size))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate; the writes themselves report failures


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms can't open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
