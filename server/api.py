"""The JSON API: text, similar and by-example search, photo metadata, thumbnails, originals, status."""

from __future__ import annotations

import mimetypes
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import ETag, State, UploadFile
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import MultipartBody, PathParameter, QueryParameter
from litestar.response import File
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_304_NOT_MODIFIED

from clipalbum.server.library import MAX_K, MAX_OFFSET, MAX_PHOTO_ID, MAX_QUERY_CHARS, MAX_UPLOAD_BYTES
from clipalbum.server.malloc import return_free_memory
from clipalbum.server.pathnames import display
from clipalbum.server.schemas import ErrorBody, SearchResponse, StatusResponse
from clipalbum.server.store import PhotoRecord
from clipalbum.server.thumbnails import (DEFAULT_SIZE, THUMBNAIL_DECODES, THUMBNAIL_SIZES, ThumbnailCache, snap_size,
                               thumbnail_etag)
from clipalbum.server.upload_gate import UPLOAD_DECODES, UPLOAD_QUEUE, UPLOAD_WAIT_SECONDS, UploadGate

if TYPE_CHECKING:
    from pathlib import Path

    from clipalbum.server.background import BackgroundIndexer
    from clipalbum.server.library import Library

# Uploads for search-by-example: the Library's cap plus room for the multipart envelope; more gets a 413.
MAX_REQUEST_BYTES = MAX_UPLOAD_BYTES + 64 * 1024
UPLOAD_GATE = UploadGate(UPLOAD_DECODES, UPLOAD_QUEUE, UPLOAD_WAIT_SECONDS)
# Thumbnails not cached yet are made on threads of their own: one waiting for decode memory (big originals)
# then holds none of the API's few worker threads, which text searches need. Waiting for a thread costs a
# coroutine, so many may wait (a grid asks for dozens); they keep normal priority, like the page they fill.
THUMBNAIL_QUEUE = 64
THUMBNAIL_WAIT_SECONDS = 30.0
THUMBNAIL_GATE = UploadGate(THUMBNAIL_DECODES, THUMBNAIL_QUEUE, THUMBNAIL_WAIT_SECONDS, what="thumbnails",
                            thread_name="thumbnail", low_priority=False)
THUMBNAIL_CACHE_CONTROL = "private, max-age=86400"  # revalidated with the ETag after a day
ORIGINAL_CACHE_CONTROL = "private, max-age=3600"

# Query parameters shared by the three searches, with the bounds the Library enforces, so that the OpenAPI
# schema states them and Litestar refuses what is outside them (400) before any handler runs.
QueryText = Annotated[str, QueryParameter(
    description=f"what the photo shows, 1 to {MAX_QUERY_CHARS} characters, not only spaces; quoted descriptions "
                'joined by + and - add and subtract them: "beach" + "sunset" - "people"',
    min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S")]
MinScoreParam = Annotated[float | None, QueryParameter(
    description="leave out results scoring below this (cosine similarity, -1 to 1)", ge=-1, le=1)]
KParam = Annotated[int, QueryParameter(description=f"how many results, 1 to {MAX_K}", ge=1, le=MAX_K)]
OffsetParam = Annotated[int, QueryParameter(description=f"skip this many results (paging), 0 to {MAX_OFFSET}",
                                            ge=0, le=MAX_OFFSET)]
SortParam = Annotated[Literal["relevance", "date"], QueryParameter(
    description="'relevance' (default) or 'date' (capture time, newest first)")]
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"  # and a real calendar day: the Library says which is not
FromParam = Annotated[str | None, QueryParameter(name="from", description="captured on or after, YYYY-MM-DD",
                                                 pattern=DATE_PATTERN, format="date")]
ToParam = Annotated[str | None, QueryParameter(name="to", description="captured on or before, YYYY-MM-DD (inclusive)",
                                               pattern=DATE_PATTERN, format="date")]
# The maximum is stated, not enforced here: the JSON number 2^63-1 reads as a float in most clients, which
# then think 2^63-1 + 192 valid; the Library answers 404 for any id that cannot exist.
PhotoId = Annotated[int, PathParameter(description="a photo id from a search result", ge=1,
                                       schema_extra={"maximum": MAX_PHOTO_ID})]
ThumbnailSize = Annotated[int | None, QueryParameter(
    description=f"long side in pixels, 1 to {THUMBNAIL_SIZES[-1]} (default {DEFAULT_SIZE}), served from the next "
                f"cached size up: {', '.join(map(str, THUMBNAIL_SIZES))}", ge=1, le=THUMBNAIL_SIZES[-1])]


def error_spec(description: str) -> ResponseSpec:
    """An error response for the OpenAPI schema: the body {"detail": message}."""
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


# The error responses each operation can give, all with the body {"detail": message}.
BAD_QUERY = {400: error_spec("a parameter out of range or malformed; `detail` names it")}
NOT_FOUND = {404: error_spec("no photo with this id, or its file is gone")}
NO_VECTOR = {409: error_spec("the photo is not embedded yet, or could not be read: nothing to compare with")}
UNREADABLE = {422: error_spec("the original cannot be decoded (its error is in the photo's metadata)")}
NOT_MODIFIED = {304: ResponseSpec(data_container=None, description="If-None-Match holds the current ETag")}
UPLOAD_ERRORS = {413: error_spec(f"the upload is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB"),
                 422: error_spec("the upload is not a readable photo (or too many pixels)")}
NO_MODEL = {503: error_spec("the model bundle cannot be used; `detail` says how to fix it")}
THUMBNAIL_BUSY = {503: error_spec("busy making other thumbnails; try again after Retry-After seconds")}
UPLOAD_BUSY = {503: error_spec("busy decoding other uploads (try again after Retry-After seconds), or the model "
                           "bundle cannot be used; `detail` says which")}


class PhotoInfo(msgspec.Struct):
    """One indexed photo, as GET /api/images/{id} returns it."""

    id: int
    path: str  # relative to its album root
    root: str
    name: str
    size: int  # bytes
    modified: str  # file modification time, ISO 8601 UTC
    width: int | None
    height: int | None
    taken_at: str | None
    content_type: str
    status: str  # indexed, pending (waiting to be embedded by the current model) or failed
    error: str | None  # why a failed file could not be read
    thumbnail_url: str
    file_url: str


class RefreshResponse(msgspec.Struct):
    state: str  # "started": a scan begins now; "queued": one runs, another follows it
    scanning: bool


class Health(msgspec.Struct):
    status: str
    model_id: str


@dataclass
class ImageUpload:
    file: UploadFile


@dataclass(frozen=True)
class ThumbnailJob:
    """A thumbnail to make: from which original, under which content hash and size, with which ETag."""

    original: Path
    content_hash: str
    size: int
    etag: str


def content_type_for(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name)
    if guessed:
        return guessed
    return {".heic": "image/heic", ".heif": "image/heif", ".webp": "image/webp"}.get(
        name[name.rfind("."):].lower(), "application/octet-stream")


def _version_key(photo: PhotoRecord) -> str:
    """What identifies the bytes of a photo's original: its content hash (or size and mtime before hashing)."""
    return photo.content_hash or f"{photo.size:x}{photo.mtime_ns:x}"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """The If-None-Match header holds this ETag (weak or strong) or '*': the client's copy is current."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def _matches(request: Request, etag: str) -> bool:
    return etag_matches(request.headers.get("if-none-match"), etag)


def _not_modified(etag: str, cache_control: str) -> Response[Any]:
    return Response(content=b"", status_code=HTTP_304_NOT_MODIFIED,
                    headers={"ETag": etag, "Cache-Control": cache_control})


class SearchController(Controller):
    path = "/api/search"
    tags = ["search"]

    @get(sync_to_thread=True, summary="Photos that match a text description", responses={**BAD_QUERY, **NO_MODEL})
    def by_text(self, state: State, q: QueryText, k: KParam = 20, offset: OffsetParam = 0,
                sort: SortParam = "relevance", date_from: FromParam = None, date_to: ToParam = None,
                min_score: MinScoreParam = None) -> SearchResponse:
        library: Library = state.library
        return library.search_text(q, k=k, offset=offset, date_from=date_from, date_to=date_to, sort=sort,
                                   min_score=min_score)

    @post("/image", status_code=200, request_max_body_size=MAX_REQUEST_BYTES,
          summary="Photos like an uploaded photo (multipart field 'file')",
          responses={**BAD_QUERY, **UPLOAD_ERRORS, **UPLOAD_BUSY})
    async def by_image(self, state: State, data: MultipartBody[ImageUpload],
                       k: KParam = 20, offset: OffsetParam = 0, sort: SortParam = "relevance",
                       date_from: FromParam = None, date_to: ToParam = None,
                       min_score: MinScoreParam = None) -> SearchResponse:
        library: Library = state.library
        # On a decode thread of UPLOAD_GATE's, once it has one free; waiting for it happens on the event loop,
        # so the worker threads that text searches run on stay free. The gate's one wait covers the decode
        # budget's too: an upload waits at most UPLOAD_GATE.wait_s in all before its 503.
        deadline = time.monotonic() + UPLOAD_GATE.wait_s
        return await UPLOAD_GATE.run(partial(_search_upload, library, data.file.file, deadline, k=k, offset=offset,
                                             date_from=date_from, date_to=date_to, sort=sort, min_score=min_score))


def _search_upload(library: "Library", upload: BinaryIO, deadline: float, **query: Any) -> SearchResponse:
    try:  # the upload's spooled file, read in place: no second copy of its bytes
        return library.search_image(upload, wait=max(0.0, deadline - time.monotonic()), **query)
    finally:
        return_free_memory()  # a decoded camera photo is tens of MB; don't keep it for the next one


class ImagesController(Controller):
    path = "/api/images/{photo_id:int}"
    tags = ["images"]

    @get(sync_to_thread=True, summary="An indexed photo's metadata", responses={**BAD_QUERY, **NOT_FOUND})
    def info(self, state: State, photo_id: PhotoId) -> PhotoInfo:
        photo = state.library.photo(photo_id)
        modified = datetime.fromtimestamp(photo.mtime_ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds")
        path = display(photo.rel_path)  # JSON can't carry the bytes of a name that is not UTF-8
        return PhotoInfo(
            id=photo.id, path=path, root=display(photo.root), name=path.rsplit("/", 1)[-1],
            size=photo.size, modified=modified, width=photo.width, height=photo.height, taken_at=photo.taken_at,
            content_type=content_type_for(photo.rel_path), status=photo.status, error=photo.error,
            thumbnail_url=f"/api/images/{photo.id}/thumbnail",
            file_url=f"/api/images/{photo.id}/file")

    @get("/similar", sync_to_thread=True, summary="More like this indexed photo (its stored vector)",
         responses={**BAD_QUERY, **NOT_FOUND, **NO_VECTOR})
    def similar(self, state: State, photo_id: PhotoId, k: KParam = 20, offset: OffsetParam = 0,
                sort: SortParam = "relevance", date_from: FromParam = None, date_to: ToParam = None,
                min_score: MinScoreParam = None) -> SearchResponse:
        library: Library = state.library
        return library.similar(photo_id, k=k, offset=offset, date_from=date_from, date_to=date_to, sort=sort,
                               min_score=min_score)

    @get("/thumbnail", summary="A JPEG thumbnail (long side `size` px, snapped up to a cached size)",
         responses={200: ResponseSpec(data_container=bytes, media_type="image/jpeg", generate_examples=False,
                                      description="the thumbnail, with an ETag"),
                    **NOT_MODIFIED, **BAD_QUERY, **NOT_FOUND, **UNREADABLE, **THUMBNAIL_BUSY})
    async def thumbnail(self, state: State, request: Request, photo_id: PhotoId, size: ThumbnailSize = None
                        ) -> Response[Any]:
        library: Library = state.library
        cache: ThumbnailCache = state.thumbnails
        snapped = snap_size(size)
        found = await sync_to_thread(_cached_thumbnail, library, cache, request, photo_id, snapped)
        if isinstance(found, Response):
            return found
        # Made on a thumbnail thread once one is free: the wait for it, and a decode's wait for memory, hold
        # none of the worker threads text searches run on. One deadline covers both waits (then a 503), so a
        # thumbnail never sits at the head of the decode budget's queue for long.
        deadline = time.monotonic() + THUMBNAIL_GATE.wait_s
        made = await THUMBNAIL_GATE.run(lambda: cache.get(found.original, found.content_hash, found.size,
                                                          wait=max(0.0, deadline - time.monotonic())))
        return _thumbnail_response(made, photo_id, found.size, found.etag)

    @get("/file", sync_to_thread=True, summary="The original photo, by id only",
         responses={200: ResponseSpec(data_container=bytes, media_type="image/*", generate_examples=False,
                                      description="the original file's bytes, with an ETag"),
                    **NOT_MODIFIED, **BAD_QUERY, **NOT_FOUND})
    def original(self, state: State, request: Request, photo_id: PhotoId) -> Response[Any]:
        library: Library = state.library
        photo = library.photo(photo_id)
        path = library.servable(photo)  # the real path, checked to be inside an album folder now
        etag = f'"{_version_key(photo)[:32]}"'
        if _matches(request, etag):
            return _not_modified(etag, ORIGINAL_CACHE_CONTROL)
        name = display(photo.rel_path).rsplit("/", 1)[-1]
        return File(path=path, media_type=content_type_for(name), content_disposition_type="inline", filename=name,
                    etag=ETag(value=etag.strip('"')), headers={"Cache-Control": ORIGINAL_CACHE_CONTROL})


def _cached_thumbnail(library: "Library", cache: ThumbnailCache, request: Request, photo_id: int,
                      size: int) -> Response[Any] | ThumbnailJob:
    """A 304 or the cached thumbnail when there is one; otherwise what making it takes."""
    photo = library.photo(photo_id)
    original = library.servable(photo)  # before the ETag: a failed or outside photo is a 404, never a 304
    version = _version_key(photo)
    etag = thumbnail_etag(version, size)
    if _matches(request, etag):
        return _not_modified(etag, THUMBNAIL_CACHE_CONTROL)
    if (cached := cache.cached(version, size)) is not None:
        return _thumbnail_response(cached, photo_id, size, etag)
    return ThumbnailJob(original=original, content_hash=version, size=size, etag=etag)


def _thumbnail_response(thumbnail: Path | bytes, photo_id: int, size: int, etag: str) -> Response[Any]:
    filename = f"{photo_id}-{size}.jpg"
    if isinstance(thumbnail, bytes):  # the cache cannot be written (disk full, read-only): served from memory
        return Response(content=thumbnail, media_type="image/jpeg",
                        headers={"ETag": etag, "Cache-Control": THUMBNAIL_CACHE_CONTROL,
                                 "Content-Disposition": f'inline; filename="{filename}"'})
    return File(path=thumbnail, media_type="image/jpeg", content_disposition_type="inline", filename=filename,
                etag=ETag(value=etag.strip('"')), headers={"Cache-Control": THUMBNAIL_CACHE_CONTROL})


class IndexController(Controller):
    path = "/api"
    tags = ["index"]

    @get("/status", sync_to_thread=True, summary="Counts, scan progress, model and failed files",
         responses=BAD_QUERY)
    def status(self, state: State, max_errors: Annotated[int, QueryParameter(
            ge=0, le=10_000, description="list at most this many failed files (`errors_truncated` says if more)")] = 100) -> StatusResponse:
        library: Library = state.library
        return library.status(max_errors=max_errors)

    @post("/index/refresh", status_code=HTTP_202_ACCEPTED,
          summary="Rescan the albums now (coalesced with a scan that is running)")
    async def refresh(self, state: State) -> RefreshResponse:
        indexer: BackgroundIndexer = state.indexer
        return RefreshResponse(state=indexer.request_scan(), scanning=indexer.scanning)


@get("/health", tags=["system"], summary="Liveness")
async def health(state: State) -> Health:
    return Health(status="ok", model_id=state.library.encoders.manifest.model_id)
