"""Query arithmetic, as rclip users know it: `"beach" + "sunset" - "people"` searches for the sum of the
first two descriptions' embeddings minus the third's. Anything else is one plain description."""

from __future__ import annotations

import re

from clipalbum.server.errors import InvalidQueryError

# One quoted description with the sign before it (none: +), and what may surround it.
_TERM = re.compile(r'\s*([+-]?)\s*"([^"]*)"\s*')


def parse_terms(query: str) -> list[tuple[float, str]]:
    """[(weight, description), ...]: [(1.0, query)] for plain text; for a query made only of quoted
    descriptions joined by + and - (the first may go without a sign), one entry per description.

    Raises InvalidQueryError for arithmetic with an empty description or without an operator between two."""
    text = query.strip()
    if not text.startswith(('"', "+", "-")) or text.count('"') < 2:
        return [(1.0, text)]
    terms: list[tuple[float, str]] = []
    position = 0
    while position < len(text):
        match = _TERM.match(text, position)
        if match is None:
            return [(1.0, text)]  # quotes inside a plain description ("the "red" car"): not arithmetic
        sign, words = match.groups()
        if terms and not sign:
            raise InvalidQueryError(f'put + or - between the quoted descriptions ("{terms[-1][1]}" and "{words}")')
        if not words.strip():
            raise InvalidQueryError("a quoted description in the query is empty")
        terms.append((-1.0 if sign == "-" else 1.0, words.strip()))
        position = match.end()
    return terms
