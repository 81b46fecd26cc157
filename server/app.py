"""The Litestar application: JSON API, static web client, background indexing; and `clipalbum serve`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from importlib import metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response
from litestar.datastructures import CacheControlHeader, State
from litestar.openapi import OpenAPIConfig
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from server.api import ImagesController, IndexController, SearchController, etag_matches, health
from server.background import BackgroundIndexer, limit_malloc_arenas
from server.errors import BundleError, ClipalbumError, ImageDecodeError, InvalidQueryError, NotFoundError
from server.library import IndexBusyError
from server.settings import DataPaths
from server.thumbnails import ThumbnailCache

if TYPE_CHECKING:
    from server.library import Library

log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return metadata.version("clipalbum")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _default_web_dir() -> Path:
    """The checkout's web/ folder (source or editable install), else the copy a wheel installs under share/."""
    checkout = Path(__file__).resolve().parent.parent / "web"
    installed = Path(sys.prefix) / "share" / "clipalbum" / "web"
    return checkout if (checkout / "index.html").is_file() or not installed.is_dir() else installed


DEFAULT_WEB_DIR = _default_web_dir()
OPENAPI_PATH = "/schema"  # JSON at /schema/openapi.json
# uvicorn's default, 5 s, closed idle connections just as busy clients reused them (connection resets in
# bench/load_mixed.py); browsers keep idle connections for minutes. nginx's default:
KEEP_ALIVE_S = 75
STOP_TIMEOUT_S = 5.0  # how long shutdown waits for a running scan before leaving it to the next start

# Our exceptions -> HTTP status. Litestar picks the most specific class, so ClipalbumError is the fallback.
ERROR_STATUS: dict[type[ClipalbumError], int] = {
    InvalidQueryError: 400,
    IndexBusyError: 409,
    NotFoundError: 404,
    ImageDecodeError: 422,
    BundleError: 503,
    ClipalbumError: 500,
}


def _error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 500)  # most specific first
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return Response(content={"detail": str(exc)}, status_code=status)


def not_modified_middleware(app: ASGIApp) -> ASGIApp:
    """Answers 304 instead of 200 when the response's ETag is one the client sent in If-None-Match."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await app(scope, receive, send)
            return
        wanted = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), None)
        if not wanted:
            await app(scope, receive, send)
            return
        swallow = False

        async def send_conditionally(message: Message) -> None:
            nonlocal swallow
            if message["type"] == "http.response.start" and message["status"] == 200:
                headers = list(message.get("headers", []))
                etag = next((v.decode("latin-1") for k, v in headers if k.lower() == b"etag"), None)
                if etag and etag_matches(wanted, etag):
                    swallow = True
                    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
                    await send({"type": "http.response.start", "status": 304, "headers": kept})
                    return
            if swallow:
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await app(scope, receive, send_conditionally)

    return middleware


def create_app(library: "Library", web_dir: Path | None = None, background_index: bool = True,
               rescan_minutes: float = 30, thumbnails_dir: Path | None = None) -> Litestar:
    """Builds the app around an open Library; the caller closes the Library after the app stops.

    Args:
        library: the open index and encoders.
        web_dir: static client served at `/` (default: the repository's web/ folder, when present).
        background_index: scan at start-up and every `rescan_minutes` (0: only on request).
        rescan_minutes: period of the automatic rescans.
        thumbnails_dir: thumbnail cache (default: the data directory's).
    """
    web_dir = Path(web_dir) if web_dir is not None else Path(os.environ.get("CLIPALBUM_WEB_DIR", DEFAULT_WEB_DIR))
    indexer = BackgroundIndexer(library, rescan_minutes=rescan_minutes if background_index else 0,
                                initial_scan=background_index)
    thumbnails = ThumbnailCache(thumbnails_dir or library.paths.thumbnails)

    @asynccontextmanager
    async def run_indexer(app: Litestar) -> AsyncIterator[None]:
        indexer.start()
        try:
            yield
        finally:
            if indexer.scanning:
                print(f"clipalbum: waiting up to {STOP_TIMEOUT_S:.0f} s for the running scan", flush=True)
            indexer.stop(STOP_TIMEOUT_S)

    handlers: list[Any] = [SearchController, ImagesController, IndexController, health]
    if (web_dir / "index.html").is_file():
        handlers.append(create_static_files_router(
            path="/", directories=[web_dir], html_mode=True, name="web",
            # Revalidate every time: the files have no hashed names, and a 304 on the LAN costs ~1 ms.
            cache_control=CacheControlHeader(no_cache=True), middleware=[not_modified_middleware]))
    else:
        log.warning("no web client at %s (index.html missing): serving the API only", web_dir)

    return Litestar(
        route_handlers=handlers,
        state=State({"library": library, "indexer": indexer, "thumbnails": thumbnails}),
        lifespan=[run_indexer],
        exception_handlers={cls: _error_response for cls in ERROR_STATUS},
        logging_config=None,  # keep the CLI's logging set-up (WARNING unless -v); Litestar's would log INFO
        openapi_config=OpenAPIConfig(
            title="clipalbum", version=_package_version(), path=OPENAPI_PATH,
            description="Find photos in your album by describing them. Errors are JSON {\"detail\": message}."),
    )


def _check_port_free(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        raise ClipalbumError(f"cannot listen on {host}:{port} ({os.strerror(exc.errno) if exc.errno else exc}); "
                             "is another server running there? choose another with --port") from exc


def serve_library(library: "Library", host: str = "127.0.0.1", port: int = 8000, rescan_minutes: float = 30,
                  background_index: bool = True) -> bool:
    """Runs the app with uvicorn until interrupted (Ctrl-C or SIGTERM).

    Returns False when a scan was still running at the end: the caller must then leave the Library open
    (the process exits; the crash-safe index resumes at the next start)."""
    import uvicorn

    _check_port_free(host, port)  # before the app starts scanning: a taken port should fail fast and clearly
    app = create_app(library, background_index=background_index, rescan_minutes=rescan_minutes)
    shown_host = "localhost" if host in ("127.0.0.1", "::1") else host
    print(f"clipalbum: serving {', '.join(str(r) for r in library.roots) or 'no album yet'}", flush=True)
    print(f"clipalbum: open http://{shown_host}:{port}/  (API schema: http://{shown_host}:{port}"
          f"{OPENAPI_PATH}/openapi.json; Ctrl-C stops)", flush=True)
    if host in ("0.0.0.0", "::"):
        print("clipalbum: listening on every interface: use this machine's LAN address from other devices",
              flush=True)
    level = "info" if logging.getLogger().isEnabledFor(logging.INFO) else "warning"
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=level,
                                           access_log=level == "info", lifespan="on",
                                           timeout_keep_alive=KEEP_ALIVE_S))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was
    # there before it; this one only notes it, so the caller's clean-up runs and the process exits 0.
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("clipalbum: stopped" + (f" ({signal.Signals(received[0]).name})" if received else ""), flush=True)
    return not app.state.indexer.scanning


def serve(paths: DataPaths, model: str | Path | None, albums: list[str] | None, host: str = "127.0.0.1",
          port: int = 8000, rescan_minutes: float = 30) -> None:
    """`clipalbum serve`: opens the index (building the default model if missing) and serves it."""
    from server.library import Library

    limit_malloc_arenas()  # before the ORT, decode and API threads exist
    library = Library.open(paths, model=model, roots=albums or None, build_if_missing=True)
    stopped_cleanly = False
    try:
        stopped_cleanly = serve_library(library, host=host, port=port, rescan_minutes=rescan_minutes)
    finally:
        if stopped_cleanly:
            library.close()
