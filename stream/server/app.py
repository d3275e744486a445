"""`fdrl serve`: one process, one `Recognizer` (one inference worker), any number of WebSocket clients.

The `websockets` library does the HTTP and WebSocket work (handshake, framing, message size,
keepalive, TLS); this module decides who may connect and what `GET /` returns:

- `/ws` is the protocol (stream/server/protocol.py, one `Connection` per client). A request is
  refused before the handshake, so before any audio is read, when its token is missing or wrong
  (401; a token is required off loopback), its browser `Origin` is not allowed (403: no
  cross-site WebSocket hijacking), its `Host` is not a loopback name on a tokenless loopback
  server (403: no DNS rebinding), or `serve.max_connections` are open (503).
- `/`, `/app.js` and `/worklet.js` are the browser page (stream/web/), offline: no CDN, no build.

Stopping (`stop` set, e.g. by SIGINT/SIGTERM): the listening socket closes, every connection
stops taking audio, labels what it holds (`connection.DRAIN_S`), sends its final `stats` and closes
with 1001.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve as websocket_serve
from websockets.http11 import Request, Response

from fdrl.config import Config, Serve
from fdrl.errors import UserError
from stream.pipeline import Recognizer
from stream.server.connection import CLOSE_TIMEOUT_S, DRAIN_S, Connection

PAGE_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
              "/worklet.js": ("worklet.js", "text/javascript")}
# The page loads only its own scripts and talks only to its own server.
PAGE_POLICY = "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; img-src data:"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclass
class ServeOptions:
    """What `serve` needs besides the config's [serve] section: the secret, TLS and the checkpoint."""

    token: str | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    checkpoint: Path | None = None

    def check(self, host: str) -> None:
        """Refuse what would listen unprotected on `host` or could not start, each with a one-line fix."""
        if not is_loopback(host) and not self.token:
            raise UserError(f"serving on {host} (not loopback) needs a token: pass --token SECRET or set "
                            f"FDRL_TOKEN, or serve on 127.0.0.1 behind a reverse proxy")
        if (self.certfile is None) != (self.keyfile is None):
            raise UserError("TLS needs both --certfile and --keyfile")
        for path in (self.certfile, self.keyfile):
            if path is not None and not path.is_file():
                raise UserError(f"TLS file not found: {path}")

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.certfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (ssl.SSLError, OSError) as e:
            raise UserError(f"cannot load the TLS certificate {self.certfile} with key {self.keyfile}: {e}") from None
        return context


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Gate:
    """Who may connect: token, origin, host name and the connection limit, checked at the handshake."""

    def __init__(self, settings: Serve, options: ServeOptions, port: int, open_connections: Callable[[], int]) -> None:
        self.token = options.token
        self.max_connections = settings.max_connections
        self.open_connections = open_connections
        scheme = "https" if options.certfile else "http"
        names = LOOPBACK_NAMES if is_loopback(settings.host) else (settings.host,)
        self.origins = {*(f"{scheme}://{name}:{port}" for name in names), *settings.origins}
        # Without a token, a loopback server answers loopback names only: a page whose DNS name was
        # rebound to 127.0.0.1 would otherwise count as same-origin.
        self.hosts = {f"{name}:{port}" for name in LOOPBACK_NAMES} if is_loopback(settings.host) and not self.token else None

    def refusal(self, request: Request) -> tuple[HTTPStatus, str] | None:
        """Why `request` may not open a WebSocket, or None when it may."""
        if self.hosts is not None and request.headers.get("Host") not in self.hosts:
            return HTTPStatus.FORBIDDEN, "unknown Host: connect to this server by a loopback name\n"
        if self.token is not None and not self.token_given(request):
            return HTTPStatus.UNAUTHORIZED, "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN\n"
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.origins:
            return HTTPStatus.FORBIDDEN, f"origin {origin} not allowed: add it with --origin or serve.origins\n"
        if self.open_connections() >= self.max_connections:
            return HTTPStatus.SERVICE_UNAVAILABLE, "too many connections (serve.max_connections): try again later\n"
        return None

    def token_given(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = (parse_qs(urlsplit(request.path).query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())  # type: ignore[union-attr]


class Server:
    """The open connections of one server and how each request is answered."""

    def __init__(self, recognizer: Recognizer, settings: Serve) -> None:
        self.recognizer, self.settings = recognizer, settings
        self.connections: set[Connection] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.ids = itertools.count(1)   # stream names: "1", "2", ... in order of connection
        self.gate: Gate | None = None

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """The page, or the gate's refusal, or None: go on with the WebSocket handshake."""
        path = urlsplit(request.path).path
        if path in PAGE_FILES:
            return page_response(ws, *PAGE_FILES[path])
        if path != "/ws":
            return ws.respond(HTTPStatus.NOT_FOUND, "not found: the protocol is at /ws, the page at /\n")
        if self.gate is None:  # listening, but the port it needs is not known yet
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "starting: try again in a moment\n")
        refusal = self.gate.refusal(request)
        return ws.respond(*refusal) if refusal else None

    async def handle(self, ws: ServerConnection) -> None:
        connection = Connection(ws, self.recognizer, self.settings, str(next(self.ids)))
        self.connections.add(connection)
        self.idle.clear()
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            if not self.connections:
                self.idle.set()

    async def stop_connections(self) -> None:
        """Each connection labels what it holds and closes; those that overrun are cut when the server closes."""
        for connection in list(self.connections):
            connection.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), DRAIN_S + 2 * CLOSE_TIMEOUT_S)


def page_response(ws: ServerConnection, name: str, content_type: str) -> Response:
    text = resources.files("stream").joinpath("web", name).read_text(encoding="utf-8")
    response = ws.respond(HTTPStatus.OK, text)
    del response.headers["Content-Type"]  # respond() makes text/plain
    response.headers["Content-Type"] = f"{content_type}; charset=utf-8"
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["Cache-Control"] = "no-store"
    return response


async def serve(cfg: Config, options: ServeOptions, stop: asyncio.Event, on_ready: Callable[[str], None] = print) -> None:
    """Serve until `stop` is set, then close every connection as the module docstring says."""
    settings = cfg.serve
    options.check(settings.host)
    context = options.ssl_context()
    async with Recognizer(cfg, options.checkpoint, face=False) as recognizer:
        server = Server(recognizer, settings)
        async with websocket_serve(server.handle, settings.host, settings.port, process_request=server.process_request,
                                   max_size=settings.max_message_bytes, compression=None, ssl=context,
                                   close_timeout=CLOSE_TIMEOUT_S) as listener:
            port = listener.sockets[0].getsockname()[1]
            server.gate = Gate(settings, options, port, lambda: len(server.connections))
            http, ws = ("https", "wss") if context else ("http", "ws")
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            on_ready(f"listening on {ws}://{host}:{port}/ws (page: {http}://{host}:{port}/)")
            await stop.wait()
            listener.close(close_connections=False)  # no new connections while the open ones finish
            await server.stop_connections()
