"""The Litestar application: JSON API, static web client, background indexing; and `clipalbum serve`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from importlib import metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import CacheControlHeader, State
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from clipalbum.server.api import ImagesController, IndexController, SearchController, etag_matches, health
from clipalbum.server.background import BackgroundIndexer
from clipalbum.server.enhance.api import EnhanceController, JobsController, document_strict_bodies, enhance_jobs
from clipalbum.server.enhance.jobs import JobNotReadyError, PromptUnsupportedError
from clipalbum.server.errors import (BundleError, ClipalbumError, ImageDecodeError, InvalidQueryError, NotFoundError,
                           NoVectorError, ServerBusyError)
from clipalbum.server.library import IndexBusyError
from clipalbum.server.malloc import limit_malloc_arenas
from clipalbum.server.security import AccessPolicy, SessionController, access_middleware, is_loopback
from clipalbum.server.pathnames import display
from clipalbum.server.settings import DataPaths
from clipalbum.server.thumbnails import ThumbnailCache

if TYPE_CHECKING:
    from clipalbum.server.library import Library

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
MAX_PLAIN_BODY_BYTES = 64 * 1024  # a login form or JSON options; nothing else the API takes is larger
STOP_TIMEOUT_S = 5.0  # how long shutdown waits for a running scan before leaving it to the next start

# Our exceptions -> HTTP status. Litestar picks the most specific class, so ClipalbumError is the fallback.
ERROR_STATUS: dict[type[ClipalbumError], int] = {
    InvalidQueryError: 400,
    IndexBusyError: 409,
    NotFoundError: 404,
    NoVectorError: 409,  # the photo exists, but its state (pending, unreadable) allows no "more like this"
    JobNotReadyError: 409,  # an enhancement job's result, asked for before it is done
    PromptUnsupportedError: 409,  # the server's search model is not the one the enhancer was trained with
    ImageDecodeError: 422,
    BundleError: 503,
    ServerBusyError: 503,
    ClipalbumError: 500,
}


INTERNAL_ERROR_DETAIL = "internal error; see the server log"


def _error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 500)  # most specific first
    if isinstance(exc, ServerBusyError):  # load shedding, not a fault: say when to come back
        log.info("%s %s refused: %s", request.method, request.url.path, exc)
        return Response(content={"detail": str(exc)}, status_code=status, headers={"Retry-After": "5"})
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return Response(content={"detail": str(exc)}, status_code=status)


def _database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """A PostgreSQL store whose database went away (a restart, a network cut): 503, and the store reconnects
    at the next request."""
    log.warning("%s %s: the database is not reachable: %s", request.method, request.url.path, exc)
    return Response(content={"detail": "the database is not reachable; try again in a few seconds"},
                    status_code=503, headers={"Retry-After": "5"})


def _database_errors(library: "Library") -> dict[type[Exception], Any]:
    """Handlers for the PostgreSQL driver's connection errors, when the library's store is in PostgreSQL
    (psycopg is the postgres extra: a SQLite server never imports it)."""
    if not library.paths.database_url:
        return {}
    import psycopg

    return {psycopg.OperationalError: _database_unavailable}


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, str]]:
    """A parameter Litestar refused (type or declared bounds): the same {"detail"} body as our own 400s."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    reasons = [f"{getattr(p.get('source'), 'value', p.get('source')) or 'request'} parameter {p['key']!r}: "
               f"{p.get('message', 'invalid')}" for p in problems if isinstance(p, dict) and p.get("key")]
    return Response(content={"detail": "; ".join(reasons) or str(exc.detail)}, status_code=400)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """Any exception nothing else handles: logged with its traceback, answered without internals."""
    log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
    return Response(content={"detail": INTERNAL_ERROR_DETAIL}, status_code=500)


def null_byte_middleware(app: ASGIApp) -> ASGIApp:
    """404 for a URL path holding a NUL: no file can be named so, and os.stat would raise ValueError."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope.get("path", ""):
            raise NotFoundException("no file has a NUL character in its name")
        await app(scope, receive, send)

    return middleware


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
               rescan_minutes: float = 30, thumbnails_dir: Path | None = None,
               access: AccessPolicy | None = None, enhancer: Path | None = None,
               enhance_device: str = "auto") -> Litestar:
    """Builds the app around an open Library; the caller closes the Library after the app stops.

    Args:
        library: the open index and encoders.
        web_dir: static client served at `/` (default: the repository's web/ folder, when present).
        background_index: scan at start-up and every `rescan_minutes` (0: only on request).
        rescan_minutes: period of the automatic rescans.
        thumbnails_dir: thumbnail cache (default: the data directory's).
        access: who may call it (default: a server on loopback: no token, Host and cross-site checks on).
        enhancer: the enhancer for /api/.../enhance (default: $CLIPALBUM_ENHANCER, else the packaged one).
        enhance_device: auto, cpu, cuda or mps, as `clipalbum enhance --device`.
    """
    web_dir = Path(web_dir) if web_dir is not None else Path(os.environ.get("CLIPALBUM_WEB_DIR", DEFAULT_WEB_DIR))
    indexer = BackgroundIndexer(library, rescan_minutes=rescan_minutes if background_index else 0,
                                initial_scan=background_index)
    thumbnails = ThumbnailCache(thumbnails_dir or library.paths.thumbnails)
    jobs = enhance_jobs(library, enhancer, enhance_device)

    @asynccontextmanager
    async def run_indexer(app: Litestar) -> AsyncIterator[None]:
        indexer.start()
        try:
            yield
        finally:
            if jobs is not None:
                jobs.stop()  # first, so that the running job stops while the scan does
            if indexer.scanning:
                print(f"clipalbum: waiting up to {STOP_TIMEOUT_S:.0f} s for the running scan", flush=True)
            started = time.monotonic()
            indexer.stop(STOP_TIMEOUT_S)
            if jobs is not None:
                jobs.close(max(0.5, STOP_TIMEOUT_S - (time.monotonic() - started)))

    handlers: list[Any] = [SearchController, ImagesController, IndexController, EnhanceController, JobsController,
                           SessionController, health]
    has_web_client = (web_dir / "index.html").is_file()
    policy = (access or AccessPolicy()).with_web_dir(web_dir if has_web_client else None)
    if has_web_client:
        handlers.append(create_static_files_router(
            path="/", directories=[web_dir], html_mode=True, name="web",
            # Revalidate every time: the files have no hashed names, and a 304 on the LAN costs ~1 ms.
            cache_control=CacheControlHeader(no_cache=True),
            middleware=[null_byte_middleware, not_modified_middleware]))
    else:
        log.warning("no web client at %s (index.html missing): serving the API only", web_dir)

    schema_done: list[bool] = []

    async def complete_schema(request: Request[Any, Any, Any]) -> None:
        # Made when first asked for, not at start-up: generating the schema costs 0.3 s of the 2 s a start
        # may take (bench/startup.py).
        # The scope's path, not request.url: building a URL object took ~5 % of the event loop's time in
        # searches (py-spy samples of a server answering text queries).
        if not schema_done and request.scope["path"].startswith(OPENAPI_PATH):
            document_strict_bodies(request.app)
            schema_done.append(True)

    app = Litestar(
        route_handlers=handlers,
        before_request=complete_schema,
        # Bodies beyond this are refused before they are read (only the photo upload allows more).
        request_max_body_size=MAX_PLAIN_BODY_BYTES,
        state=State({"library": library, "indexer": indexer, "thumbnails": thumbnails, "access": policy,
                     "enhance_jobs": jobs}),
        lifespan=[run_indexer],
        exception_handlers={**{cls: _error_response for cls in ERROR_STATUS}, ValidationException: _validation_error,
                            HTTP_500_INTERNAL_SERVER_ERROR: _internal_error,
                            **_database_errors(library)},
        logging_config=None,  # keep the CLI's logging set-up (WARNING unless -v); Litestar's would log INFO
        openapi_config=OpenAPIConfig(
            title="clipalbum", version=_package_version(), path=OPENAPI_PATH,
            description="Find photos in your album by describing them. Errors are JSON {\"detail\": message}."),
        # Browsers may call the API from other origins only when the owner names them (--cors-origin).
        cors_config=CORSConfig(allow_origins=list(policy.cors_origins), allow_headers=["Authorization", "Content-Type"],
                               allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"]) if policy.cors_origins else None,
    )
    # Outermost, around Litestar's own handler: every route, the static client, the schema and even 404s
    # pass the access policy, so no route can be left out of it.
    app.asgi_handler = access_middleware(app.asgi_handler, policy)
    return app


def _check_port_free(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        raise ClipalbumError(f"cannot listen on {host}:{port} ({os.strerror(exc.errno) if exc.errno else exc}); "
                             "is another server running there? choose another with --port") from exc


def exposure_notice(policy: AccessPolicy, new_token: str | None) -> list[str]:
    """What `serve` tells its owner about who can reach the album and how to get in."""
    if not policy.token_required:
        return []
    lines = []
    if policy.bound_host in ("0.0.0.0", "::"):
        lines.append("listening on every interface: your album is reachable from the network. "
                     "Use this machine's LAN address from other devices.")
    elif not is_loopback(policy.bound_host):
        lines.append(f"listening on {policy.bound_host}: your album is reachable from the network.")
    elif policy.allowed_hosts:
        lines.append("answering for " + ", ".join(sorted(policy.allowed_hosts)) + " too (a reverse proxy?).")
    lines.append("every request needs the access token: log in on the web page with it, or send "
                 "'Authorization: Bearer TOKEN'.")
    if new_token:
        lines.append(f"new access token (shown only this once; `clipalbum token` shows it again): {new_token}")
    else:
        lines.append("`clipalbum token` shows the access token; `clipalbum token --rotate` replaces it.")
    return lines


def serve_library(library: "Library", host: str = "127.0.0.1", port: int = 8000, rescan_minutes: float = 30,
                  background_index: bool = True, allowed_hosts: list[str] | tuple[str, ...] = (),
                  cors_origins: list[str] | tuple[str, ...] = (), require_token: bool = False) -> bool:
    """Runs the app with uvicorn until interrupted (Ctrl-C or SIGTERM).

    Beyond loopback (or with `allowed_hosts` or `require_token`) every request needs the access token in
    the data directory, created here on first use.

    Returns False when a scan was still running at the end: the caller must then leave the Library open
    (the process exits; the crash-safe index resumes at the next start)."""
    import uvicorn

    _check_port_free(host, port)  # before the app starts scanning: a taken port should fail fast and clearly
    policy = AccessPolicy.for_server(host, library.paths.token, allowed_hosts=allowed_hosts,
                                     cors_origins=cors_origins, require_token=require_token)
    new_token = policy.tokens.current() if policy.tokens is not None and policy.tokens.ensure() else None
    app = create_app(library, background_index=background_index, rescan_minutes=rescan_minutes, access=policy)
    shown_host = "localhost" if host in ("127.0.0.1", "::1") else host
    print(f"clipalbum: serving {', '.join(display(r) for r in library.roots) or 'no album yet'}", flush=True)
    print(f"clipalbum: open http://{shown_host}:{port}/  (API schema: http://{shown_host}:{port}"
          f"{OPENAPI_PATH}/openapi.json; Ctrl-C stops)", flush=True)
    for line in exposure_notice(policy, new_token):
        print(f"clipalbum: {line}", flush=True)
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
          port: int = 8000, rescan_minutes: float = 30, allowed_hosts: list[str] | tuple[str, ...] = (),
          cors_origins: list[str] | tuple[str, ...] = (), require_token: bool = False,
          follow_links_outside: bool | None = None) -> None:
    """`clipalbum serve`: opens the index (building the default model if missing) and serves it."""
    from clipalbum.server.library import Library

    limit_malloc_arenas()  # before the ORT, decode and API threads exist
    library = Library.open(paths, model=model, roots=albums or None, build_if_missing=True,
                           follow_links_outside=follow_links_outside, switch_in_background=True)
    stopped_cleanly = False
    try:
        stopped_cleanly = serve_library(library, host=host, port=port, rescan_minutes=rescan_minutes,
                                        allowed_hosts=allowed_hosts, cors_origins=cors_origins,
                                        require_token=require_token)
    finally:
        if stopped_cleanly:
            library.close()
