"""JSON shapes at the boundaries (API responses, CLI --json): msgspec Structs."""

from __future__ import annotations

from typing import Literal

import msgspec


class Hit(msgspec.Struct):
    id: int
    path: str  # relative to its album root
    score: float  # cosine similarity, higher is closer
    width: int | None
    height: int | None
    taken_at: str | None  # EXIF capture time, ISO 8601
    root: str = ""  # the album root the path is relative to


class SearchResponse(msgspec.Struct):
    results: list[Hit]
    took_ms: float
    query: str = ""
    offset: int = 0
    k: int = 0


class ErrorBody(msgspec.Struct):
    """Every error response: what failed and what to do."""

    detail: str


class FailedFile(msgspec.Struct):
    path: str
    error: str


class ScanProgress(msgspec.Struct):
    running: bool = False
    phase: Literal["idle", "scanning", "embedding", "done", "error"] = "idle"
    total: int = 0  # files that need embedding in this scan
    done: int = 0
    failed: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    message: str = ""


class SwitchProgress(msgspec.Struct, frozen=True):
    """A model switch under way: photos embedded with `model_id` so far, of `total` that need it."""

    model_id: str
    done: int
    total: int


class StatusResponse(msgspec.Struct):
    indexed: int
    pending: int
    failed: int
    roots: list[str]
    model_id: str
    embed_dim: int
    progress: ScanProgress
    # At most `max_errors` entries: first the problems the last scan met walking the folders (links outside,
    # loops, unreadable or missing folders: they hide whole folders), then the most recently changed of the
    # `failed` files.
    errors: list[FailedFile]
    errors_truncated: bool = False  # True when `errors` lists fewer entries than `errors_total`
    # The walk problems kept (at most the first 1,000 a scan meets: store.MAX_WALK_PROBLEMS) plus `failed`.
    errors_total: int = 0
    # Text searches scoring below this are mostly noise with this model (measured; None: not known). The web
    # page asks for it as min_score until "Show weaker matches".
    suggested_min_score: float | None = None
    # A model switch under way (`serve --model` on an index another model embedded): photos embedded with the
    # new model so far, of how many. `model_id` answers until it is done. None: no switch.
    switch: SwitchProgress | None = None
