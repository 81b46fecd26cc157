"""Schemathesis hooks for tests/test_schema_conformance.py: the rules OpenAPI cannot state."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def filter_query(context: Any, query: dict[str, Any] | None) -> bool:
    # `from` after `to` is refused with 400 (tested in test_api); the schema cannot say that one parameter
    # must not exceed another, so valid-looking data must not pair them so.
    if not query:
        return True
    start, end = query.get("from"), query.get("to")
    return not (isinstance(start, str) and isinstance(end, str) and start > end)


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    # An empty upload is refused with 400 (tested in test_api); Litestar's schema for an UploadFile part
    # cannot carry minLength, so an empty photo the fuzzer makes is given one byte (still not a photo: 422).
    if isinstance(body, dict) and not body.get("file", b"?"):
        return {**body, "file": b"\x00"}
    return body
