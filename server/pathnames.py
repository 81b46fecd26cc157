"""File names as the OS gives them (bytes), as SQLite stores them, and as people and JSON see them.

Python names a file whose bytes are not UTF-8 with lone surrogates (os.fsdecode's surrogateescape): exact,
but neither SQLite nor JSON accept them. So a name is stored as TEXT when it is valid UTF-8 and as a BLOB of
its exact bytes when not (SQLite never compares a BLOB equal to a TEXT, and such bytes are never valid
UTF-8, so the two cannot collide; old databases hold only TEXT and need no migration). Responses carry a
display form with U+FFFD for the bytes that are not UTF-8; the photo id, never the path, identifies a file.
"""

from __future__ import annotations

import os


def to_db(name: str) -> str | bytes:
    """The value to store for a path or name that Python got from the file system."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


def from_db(value: str | bytes) -> str:
    """The Python name (os.fsencode gives back the exact bytes) of a stored path or name."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def display(name: str | os.PathLike[str]) -> str:
    """`name` made safe for JSON, HTML and terminals: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")
