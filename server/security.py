"""Who may talk to the server: the Host allow-list, the cross-site refusal and the access token, as one middleware.

On loopback the server trusts its caller; bound anywhere else (or behind a reverse proxy) every request that
reads album data needs the token. The Host check and the cross-site refusal apply everywhere: DNS rebinding
and cross-site form posts target servers on loopback too.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.openapi import ResponseSpec
from litestar.types import ASGIApp, Receive, Scope, Send

from clipalbum.server.errors import ClipalbumError

log = logging.getLogger(__name__)

TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 bits
MIN_TOKEN_CHARS = 16  # a token file holding less was truncated or hand-edited badly
COOKIE_NAME = "clipalbum_session"
COOKIE_MAX_AGE_S = 90 * 24 * 3600  # log in once per device a season; rotating the token logs everyone out
COOKIE_CONTEXT = b"clipalbum-cookie-v1"  # the cookie holds HMAC(token, this), never the token itself
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths that answer without the token: liveness and the login dance. The static web client (HTML, JS, CSS:
# code, not album data) is checked separately, by whether the path names one of its files.
OPEN_PATHS = frozenset({"/health", "/api/login", "/api/logout", "/api/session"})
API_PREFIXES = ("/api/", "/schema")
# Headers reverse proxies commonly add (Caddy, Traefik, Apache, nginx as the README sets it up): a server
# that trusts its callers because it listens on loopback must not trust a proxy's. Best effort only: a bare
# nginx proxy_pass adds none of them, which is why the README says a proxy needs --allowed-host.
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
                 b"x-forwarded-port", b"x-real-ip", b"via")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: addresses no other machine can reach."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header (or an allowed-host entry) as (lower-case name without brackets or final dot, port)."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:  # a bare name, or a bare IPv6 address
        name, port = value, ""
    return name.rstrip("."), int(port) if port.isdigit() else None


MAX_IP_TEXT = 64  # IPv6 text is at most 45 characters, plus a zone ("%eth0")


def _is_ip_literal(name: str) -> bool:
    # Asked on every request, nearly always for the same few Host names. The cache's keys come from the
    # client, so only what could be an address is looked up in it or kept.
    return len(name) <= MAX_IP_TEXT and _parses_as_ip(name)


@functools.lru_cache(maxsize=256)
def _parses_as_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _machine_names() -> set[str]:
    """This machine's host name, short and as announced over mDNS (name.local)."""
    full = socket.gethostname().lower().rstrip(".")
    short = full.split(".")[0]
    return {n for n in (full, short, f"{short}.local") if n}


class TokenStore:
    """The access token in DATA_DIR/token (mode 0600): created on first use, re-read when the file changes,
    so `clipalbum token --rotate` takes effect in a running server without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int, int] | None = None  # (dev, ino, mtime_ns, size) of the file read
        self._token = ""

    def current(self) -> str:
        """The token; creates the file when it is missing. One stat per call when nothing changed."""
        try:
            try:
                st = self.path.stat()
            except (FileNotFoundError, NotADirectoryError):
                self.ensure()
                st = self.path.stat()
            signature = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if signature != self._seen:
                with self._lock:
                    self._token = self._read()
                    self._seen = signature
        except OSError as exc:
            raise ClipalbumError(f"cannot read the access token {self.path} ({exc.strerror or exc}); "
                                 "check the data directory's permissions") from exc
        return self._token

    def ensure(self) -> bool:
        """Creates the token file if it is missing; True when this call created it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._install(secrets.token_urlsafe(TOKEN_BYTES), replace=False)
        except FileExistsError:
            if not self.path.is_file():
                raise ClipalbumError(f"cannot create the access token {self.path}: something else is in the way")
            self._fix_mode()
            return False
        except OSError as exc:
            raise ClipalbumError(f"cannot create the access token {self.path} ({exc.strerror or exc}); "
                                 "the data directory must be writable (or use --data-dir)") from exc
        log.info("created the access token in %s", self.path)
        return True

    def rotate(self) -> str:
        """A new token replaces the old one: old bearer tokens and login cookies stop working."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._install(token, replace=True)
        except OSError as exc:
            raise ClipalbumError(f"cannot write the access token {self.path} ({exc.strerror or exc})") from exc
        return token

    def _install(self, token: str, replace: bool) -> None:
        # Write a private temporary file in full, then link (no clobber) or rename it into place: a reader
        # never sees a half-written token, and two first uses racing keep one token.
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(token + "\n")
                out.flush()
                os.fsync(out.fileno())
            if replace:
                os.replace(tmp, self.path)
            else:
                os.link(tmp, self.path)  # FileExistsError when another process got there first
        finally:
            tmp.unlink(missing_ok=True)

    def _fix_mode(self) -> None:
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("access token %s was readable by others (mode %o); set it to 0600", self.path, mode)
            self.path.chmod(0o600)

    def _read(self) -> str:
        self._fix_mode()
        token = self.path.read_text(encoding="utf-8", errors="replace").strip()
        if len(token) < MIN_TOKEN_CHARS:
            raise ClipalbumError(f"the access token in {self.path} is empty or too short; "
                                 "run `clipalbum token --rotate` to make a new one")
        return token


def cookie_value(token: str) -> str:
    """What the login cookie holds: derived from the token, so rotating the token logs every browser out."""
    return hmac.new(token.encode(), COOKIE_CONTEXT, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AccessPolicy:
    """What the middleware enforces; built once from how the server was started."""

    bound_host: str = "127.0.0.1"
    allowed_hosts: frozenset[str] = frozenset()  # extra Host names (lower case, no port), e.g. a proxy's
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the API from their own pages
    tokens: TokenStore | None = None  # set when a token is required
    web_dir: Path | None = None  # the static client's files answer without the token
    _known_hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bound, _ = split_host(self.bound_host)
        names = {"localhost", bound, *_machine_names(), *(split_host(h)[0] for h in self.allowed_hosts)}
        object.__setattr__(self, "_known_hosts", frozenset(n for n in names if n))

    @classmethod
    def for_server(cls, host: str, token_file: Path, allowed_hosts: list[str] | tuple[str, ...] = (),
                   cors_origins: list[str] | tuple[str, ...] = (), require_token: bool = False,
                   web_dir: Path | None = None) -> "AccessPolicy":
        """The policy for a server bound to `host`: a token beyond loopback, or when asked, or when the
        server answers for other names (a reverse proxy in front of a loopback server)."""
        needs_token = require_token or not is_loopback(host) or bool(allowed_hosts)
        return cls(bound_host=host, allowed_hosts=frozenset(allowed_hosts),
                   cors_origins=tuple(o.rstrip("/").lower() for o in cors_origins),
                   tokens=TokenStore(token_file) if needs_token else None, web_dir=web_dir)

    @property
    def token_required(self) -> bool:
        return self.tokens is not None

    def with_web_dir(self, web_dir: Path | None) -> "AccessPolicy":
        return replace(self, web_dir=web_dir)

    # ---- the three checks; each returns None when the request passes, else (status, detail) ----

    def check_host(self, host_header: str | None) -> tuple[int, str] | None:
        if host_header is None:
            return None  # no browser omits Host: without one there is no name to rebind
        name, _ = split_host(host_header)
        if _is_ip_literal(name) or name in self._known_hosts or name.endswith(".localhost"):
            return None
        return 421, (f"this server does not answer for the host name '{name}'; if that is how you reach it "
                     f"(a reverse proxy, a DNS name), start it with --allowed-host {name}")

    def check_origin(self, method: str, host_header: str | None, origin: str | None,
                     fetch_site: str | None) -> tuple[int, str] | None:
        """State changes must come from this server's own pages (or a configured CORS origin)."""
        if method in SAFE_METHODS:
            return None
        if origin is not None and origin.rstrip("/").lower() in self.cors_origins:
            return None
        # same-site counts as foreign too: another port on the same machine is "same-site" to a browser.
        if fetch_site in ("cross-site", "same-site"):
            return 403, "cross-site requests may not change anything here"
        if origin is not None and not same_origin(origin, host_header):
            return 403, f"requests from {origin} may not change anything here"
        return None

    def check_proxied(self, proxied: bool) -> tuple[int, str] | None:
        """Without a token the server trusts its callers, so it refuses those that came through a proxy."""
        if self.tokens is None and proxied:
            return 403, ("this request came through a proxy, but the server needs no token because it listens "
                         "on loopback: start it with --allowed-host NAME (the name the proxy serves) or "
                         "--require-token")
        return None

    def check_token(self, path: str, method: str, authorization: str | None, cookie: str | None,
                    ) -> tuple[int, str] | None:
        path = normalize_path(path)
        if self.tokens is None or path in OPEN_PATHS or method == "OPTIONS" or self.is_web_client(path, method):
            return None  # OPTIONS: a CORS preflight carries no credentials and no data
        if self.authenticated_by(authorization, cookie):
            return None
        return 401, ("this album needs its access token: log in on the web page, or send "
                     "'Authorization: Bearer TOKEN' (`clipalbum token` on the server shows it)")

    def authenticated_by(self, authorization: str | None, cookie: str | None) -> str | None:
        """'bearer' or 'cookie' when the request carries the current token (or its cookie), else None."""
        if self.tokens is None:
            return None
        token = self.tokens.current()
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
            return "bearer"
        if cookie and hmac.compare_digest(cookie.encode(), cookie_value(token).encode()):
            return "cookie"
        return None

    def is_web_client(self, path: str, method: str) -> bool:
        """A GET of one of the static client's own files (or `/`, its index page)."""
        if method not in ("GET", "HEAD") or self.web_dir is None or path.startswith(API_PREFIXES):
            return False
        if path == "/":
            return True
        root = self.web_dir.resolve()
        try:
            target = (root / path.lstrip("/")).resolve()
            return target.is_relative_to(root) and target.is_file()
        except (ValueError, OSError):  # a NUL byte or an over-long name: not one of the client's files
            return False


def normalize_path(path: str) -> str:
    """The path as the router reads it: repeated slashes collapsed, no trailing slash (`//api/status/`)."""
    return "/" + "/".join(part for part in path.split("/") if part)


def same_origin(origin: str, host_header: str | None) -> bool:
    """The Origin header names the host and port the request was sent to (default ports implied)."""
    if origin == "null" or host_header is None:
        return False
    parts = urlsplit(origin)
    if not parts.hostname:
        return False
    origin_port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    name, port = split_host(host_header)
    # Behind a TLS proxy the Host often has no port while the origin implies 443: accept either default.
    ports_match = port == origin_port or (port is None and origin_port in (80, 443))
    return parts.hostname.rstrip(".").lower() == name and ports_match


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    header = _header(scope, b"cookie")
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def access_middleware(app: ASGIApp, policy: AccessPolicy) -> ASGIApp:
    """Wraps the whole ASGI app (every route, the static client, the schema, 404s) in `policy`."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, send)
            return
        if scope["type"] != "http":  # the app has no websocket endpoints; refuse rather than forget one
            await send({"type": "websocket.close", "code": 1008})
            return
        method = scope["method"]
        host = _header(scope, b"host")
        origin = _header(scope, b"origin")
        try:
            refusal = (policy.check_host(host)
                       or policy.check_proxied(any(key in PROXY_HEADERS for key, _ in scope["headers"]))
                       or policy.check_origin(method, host, origin, _header(scope, b"sec-fetch-site"))
                       or policy.check_token(scope["path"], method, _header(scope, b"authorization"),
                                             _cookie(scope, COOKIE_NAME)))
        except ClipalbumError as exc:  # an unreadable token file: say so rather than let anyone in
            log.error("access check failed: %s", exc)
            refusal = (503, str(exc))
        if refusal is None:
            await app(scope, receive, send)
            return
        status, detail = refusal
        headers = [(b"content-type", b"application/json")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="clipalbum"'))
        if origin is not None and origin.rstrip("/").lower() in policy.cors_origins:
            headers += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return middleware


# ---- login for the web page: a form or JSON posts the token, an HttpOnly SameSite=Strict cookie comes back ----

class LoginForm(msgspec.Struct):
    token: str


class Refusal(msgspec.Struct):
    detail: str


class SessionInfo(msgspec.Struct):
    token_required: bool  # false on loopback: nothing to log in to
    authenticated: bool
    via: str | None  # "bearer", "cookie" or None


async def _presented_token(request: Request[Any, Any, Any]) -> str:
    body = await request.body()
    if request.content_type[0] == "application/json":
        try:
            return msgspec.json.decode(body, type=LoginForm).token
        except msgspec.DecodeError:
            return ""
    form = await request.form()
    value = form.get("token", "")
    return value if isinstance(value, str) else ""


def _session_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return Cookie(key=COOKIE_NAME, value=value, path="/", httponly=True, samesite="strict", max_age=max_age,
                  secure=request.url.scheme == "https")  # uvicorn sets the scheme from a local proxy's headers


class SessionController(Controller):
    """POST /api/login, POST /api/logout, GET /api/session (open without the token: see OPEN_PATHS)."""

    path = "/api"
    tags = ["session"]

    @post("/login", status_code=200, summary="Log in with the access token (JSON or form field 'token')",
          responses={401: ResponseSpec(Refusal, description="not this album's access token")})
    async def login(self, request: Request[Any, Any, Any], state: State) -> Response[SessionInfo]:
        policy: AccessPolicy = state.access
        if policy.tokens is None:
            return Response(SessionInfo(token_required=False, authenticated=True, via=None))
        token = policy.tokens.current()
        if not hmac.compare_digest((await _presented_token(request)).strip().encode(), token.encode()):
            return Response(Refusal("that is not this album's access token"), status_code=401,  # type: ignore[arg-type]
                            headers={"WWW-Authenticate": 'Bearer realm="clipalbum"'})
        return Response(SessionInfo(token_required=True, authenticated=True, via="cookie"),
                        cookies=[_session_cookie(request, cookie_value(token), COOKIE_MAX_AGE_S)])

    @post("/logout", status_code=200, summary="Forget this browser's login cookie")
    async def logout(self, request: Request[Any, Any, Any], state: State) -> Response[SessionInfo]:
        policy: AccessPolicy = state.access
        return Response(SessionInfo(token_required=policy.token_required, authenticated=False, via=None),
                        cookies=[_session_cookie(request, "", 0)])

    @get("/session", summary="Whether this album needs the token, and whether this request carries it")
    async def session(self, request: Request[Any, Any, Any], state: State) -> SessionInfo:
        policy: AccessPolicy = state.access
        if policy.tokens is None:
            return SessionInfo(token_required=False, authenticated=True, via=None)
        via = policy.authenticated_by(request.headers.get("authorization"), request.cookies.get(COOKIE_NAME))
        return SessionInfo(token_required=True, authenticated=via is not None, via=via)
