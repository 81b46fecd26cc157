"""File names as the OS gives them (bytes), as SQLite stores them, and as people and JSON see them.

Python names a file whose bytes are not UTF-8 with lone surrogates (os.fsdecode's surrogateescape): exact,
but neither SQLite nor JSON accept them. So a name is stored as TEXT when it is valid UTF-8 and as a BLOB of
its exact bytes when not (SQLite never compares a BLOB equal to a TEXT, and such bytes are never valid
UTF-8, so the two cannot collide; old databases hold only TEXT and need no migration). Responses carry a
display form with U+FFFD for the bytes that are not UTF-8; the photo id, never the path, identifies a file.
"""

from __future__ import annotations

import os
import re


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def for_terminal(text: str) -> str:
    """`text` without the characters a terminal would act on (escape sequences, newlines, bidi overrides):
    a file name printed by the CLI can't recolour, move or reorder the output; they show as \\xNN or \\uNNNN."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), display(text))
