# The network edge: one small asyncio.Protocol per TCP connection driving websockets' sans-I/O
# ServerProtocol (no task per connection), plain HTTP requests handed to the Hub, and the
# translation of errors into frames, HTTP statuses and close codes. Application logic lives in
# the Hub (app.py); this module never touches PostgreSQL.
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Protocol as TypingProtocol
from typing import cast
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, SERVER, Protocol, State
from websockets.server import ServerProtocol
from websockets.typing import Origin

from notifyd.auth import Identity
from notifyd.config import Settings
from notifyd.errors import AuthError, ClientError
from notifyd.limits import TokenBucket, Verdict
from notifyd.metrics import Metrics
from notifyd.protocol import ClientFrame, decode_client_frame, error_frame, websocket_text
from notifyd.session import Session
from notifyd.session import State as SessionState

log = logging.getLogger("notifyd.server")
# websockets logs every open and close at INFO; notifyd logs its own lines instead.
logging.getLogger("websockets").setLevel(logging.WARNING)

CLOSE_TOKEN = 4001
CLOSE_REVOKED = 4003
CLOSE_SLOW = 4008
CLOSE_GRACE = 2.0  # seconds for a closing connection's buffered bytes to drain
MAX_REQUEST_BYTES = 16384  # handshake request line and headers; websockets refuses larger


class Hub(TypingProtocol):
    """What a connection needs from the application (app.App)."""

    settings: Settings
    metrics: Metrics

    def verify(self, token: str) -> Identity: ...
    def admit(self, identity: Identity) -> str | None: ...
    def opened(self, conn: Connection) -> None: ...
    def went_live(self, conn: Connection) -> bytes:
        """Index the authenticated connection; returns its greeting (connection-confirmed)
        as a frame for the caller to write."""
    def closed(self, conn: Connection) -> None: ...
    def handle(self, conn: Connection, frame: ClientFrame) -> None: ...
    def http(self, conn: Connection, method: str, target: str, headers: Headers) -> None: ...


def token_from_request(request: Request, settings: Settings) -> tuple[str | None, bool]:
    """The handshake's token and whether it came from a cookie: query, then Authorization
    header, then the configured cookie (only when an Origin allow-list is set)."""
    query = parse_qs(urlsplit(request.path).query)
    if query.get("token"):
        return query["token"][0], False
    header = request.headers.get("Authorization")
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip(), False
    if settings.jwt_cookie and settings.allowed_origins and "Cookie" in request.headers:
        jar: SimpleCookie = SimpleCookie()
        try:
            for raw in request.headers.get_all("Cookie"):
                jar.load(raw)
        except CookieError:
            return None, False
        morsel = jar.get(settings.jwt_cookie)
        if morsel is not None and morsel.value:
            return morsel.value, True
    return None, False


class Connection(asyncio.Protocol):
    """One client: handshake or HTTP request, then WebSocket frames in and out."""

    __slots__ = ("bucket", "deadline", "hub", "last_recv", "opened_at", "partial", "pending",
                 "ping_sent", "session", "transport", "ws")

    def __init__(self, hub: Hub, now: float) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        s = hub.settings
        origins: list[Origin | None] | None = None
        if s.allowed_origins:
            # No Origin at all is a native (non-browser) client, which token auth covers.
            origins = [*(Origin(o) for o in s.allowed_origins), None]
        # ServerProtocol for the opening handshake only; after a 101 the connection switches
        # to a frame-level Protocol (see _upgrade) so the parsed request is not kept alive.
        self.ws: Protocol = ServerProtocol(origins=origins, max_size=s.max_frame_bytes)
        self.pending: bytearray | None = bytearray()  # handshake bytes until the blank line
        self.session = Session(uuid.uuid4().hex)
        self.partial: bytearray | None = None
        self.bucket: TokenBucket | None = None  # made on the first client frame
        # When the timer looks at this connection next: first the handshake and auth deadline,
        # then keepalive and token expiry (app.App.tick).
        self.deadline = now + s.auth_timeout
        self.last_recv = now
        self.opened_at = now
        self.ping_sent = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.hub.opened(self)

    def data_received(self, data: bytes) -> None:
        self.last_recv = asyncio.get_running_loop().time()
        self.ping_sent = 0.0
        pending = self.pending
        if pending is not None:
            # Feed the handshake protocol the request and nothing more; what follows the
            # blank line (frames from a client that did not wait for the 101) comes after.
            pending += data
            end = pending.find(b"\r\n\r\n")
            if end < 0 and len(pending) <= MAX_REQUEST_BYTES:
                return
            self.pending = None
            cut = end + 4 if end >= 0 else len(pending)
            self._receive(bytes(pending[:cut]))
            data = bytes(pending[cut:])
            if not data or self.ws.state is not OPEN:
                return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._on_request(event)
            elif isinstance(event, Frame):
                self._on_frame(event)
        self._flush()

    def eof_received(self) -> bool | None:
        if self.pending is not None:
            self.pending = None
            self.abort()  # closed before sending a whole request
            return None
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # gone: a pending close-grace abort has nothing left to do
        self._ended()
        # websockets' parser is a generator holding its protocol, and the error that ended it
        # (a peer gone without a closing handshake) holds the generator's frame: reference
        # cycles. Broken here (no data comes any more), the connection is freed by reference
        # counting, not left to the cycle collector, which does not see it at all while it
        # is frozen (notifyd.gcpolicy).
        ws = self.ws
        ws.parser.close()
        if ws.parser_exc is not None:
            ws.parser_exc.__traceback__ = None

    def _ended(self) -> None:
        if self.session.state is not SessionState.CLOSED:
            self.session.close()
            self.hub.closed(self)

    # -- sending ------------------------------------------------------------------------

    def write(self, frame: bytes) -> None:
        """Write one pre-built WebSocket frame, counted in the metrics."""
        metrics = self.hub.metrics
        metrics.frames_sent += 1
        metrics.bytes_sent += len(frame)
        self.deliver(frame)

    def deliver(self, frame: bytes) -> None:
        """write() without the count: the router's fan-out counts in bulk (a third of the
        Python time per recipient otherwise). A client whose send buffer passes the bound is
        closed with 4008 instead of letting memory grow."""
        transport = self.transport
        if transport is None or self.ws.state is not OPEN:
            return
        transport.write(frame)
        hub = self.hub
        if transport.get_write_buffer_size() > hub.settings.max_send_buffer:
            hub.metrics.slow_consumer_closes += 1
            log.warning("closing slow consumer %s (send buffer over %d bytes)",
                        self.session.connection_id, hub.settings.max_send_buffer)
            self.close(CLOSE_SLOW, "too slow: reconnect and sync")

    def send(self, payload: bytes) -> None:
        """Send one JSON frame to this connection only."""
        self.write(websocket_text(payload))

    def close(self, code: int, reason: str) -> None:
        """Send a close frame and end the connection (the client need not answer). What is
        still buffered gets CLOSE_GRACE seconds to drain; then the socket is aborted, so a
        client that stopped reading cannot hold the memory."""
        if self.ws.state is OPEN:
            self.ws.send_close(code, reason)
            self._flush()
        transport = self.transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():
                asyncio.get_running_loop().call_later(CLOSE_GRACE, self.abort)
        self._ended()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def upgraded(self) -> bool:
        """Past the opening handshake: a WebSocket (a plain HTTP request never gets here)."""
        return not isinstance(self.ws, ServerProtocol)

    def close_info(self) -> tuple[int, str, str]:
        """(code, reason, who closed: server, client or network) of a connection that ended."""
        ws = self.ws
        sent, rcvd = ws.close_sent, ws.close_rcvd
        if rcvd is not None and (sent is None or ws.close_rcvd_then_sent):
            return rcvd.code, rcvd.reason, "client"
        if sent is not None:
            return sent.code, sent.reason, "server"
        return 1006, "connection lost", "network"

    def peer(self) -> str:
        transport = self.transport
        address = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(address, tuple) and len(address) >= 2:
            return f"{address[0]}:{address[1]}"
        return ""

    def ping(self, now: float) -> None:
        if self.ws.state is OPEN:
            self.ws.send_ping(b"")
            self.ping_sent = now
            self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # EOF: the protocol is done with this connection
                transport.close()
        if self.ws.state is State.CLOSED and self.session.state is not SessionState.CLOSED:
            transport.close()

    # -- handshake ----------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        ws = self.ws
        assert isinstance(ws, ServerProtocol)  # requests come only before the upgrade
        route = urlsplit(request.path).path
        if route != "/ws":
            self.hub.http(self, request.method, request.path, request.headers)
            return
        response = ws.accept(request)
        if response.status_code != 101:
            ws.send_response(response)
            return
        token, from_cookie = token_from_request(request, self.hub.settings)
        identity = None
        if token is not None:
            if from_cookie and request.headers.get("Origin") is None:
                # Browsers always send Origin; a cookie without one is not from an allowed page.
                ws.send_response(ws.reject(403, "cookie authentication needs an allowed Origin\n"))
                return
            try:
                identity = self.hub.verify(token)
            except AuthError as exc:
                log.info("handshake refused: %s", exc)
                ws.send_response(ws.reject(401, f"{exc}\n"))
                return
            refusal = self.hub.admit(identity)
            if refusal is not None:
                ws.send_response(ws.reject(429, f"{refusal}\n"))
                return
        if parse_qs(urlsplit(request.path).query).get("sync") == ["1"]:
            self.session.wait_for_sync()
        ws.send_response(response)
        # The 101 goes out before any frame written directly to the transport: with the
        # greeting, when the token came with the request (one system call, not two).
        head = b"".join(ws.data_to_send())
        self._upgrade()
        if identity is None:
            if self.transport is not None:
                self.transport.write(head)
            return
        self.session.authenticate(identity)
        self.greet(head)

    def respond(self, status: int, content_type: str, body: bytes,
                headers: list[tuple[str, str]]) -> None:
        """The answer to a plain HTTP request (see http_api); the connection then closes."""
        ws = self.ws
        if self.transport is None or not isinstance(ws, ServerProtocol):
            return
        ws.send_response(Response(status, HTTPStatus(status).phrase, Headers([
            ("Date", formatdate(usegmt=True)), ("Content-Type", content_type),
            ("Content-Length", str(len(body))), ("Connection", "close"), *headers]), body))
        self._flush()

    def _upgrade(self) -> None:
        """Replace the handshake protocol by a frame-level one. ServerProtocol's parser keeps
        the parsed request (headers and all, about 2.5 kB) alive for the life of the
        connection; the fresh Protocol starts clean. Nothing is lost: the handshake protocol
        was fed the request and nothing after it (see data_received). Its parser, a generator
        holding the protocol, is closed: a cycle the collector may have frozen (gcpolicy) would
        otherwise outlive the connection until the next thaw."""
        self.ws.parser.close()
        self.ws = Protocol(SERVER, state=OPEN, max_size=self.hub.settings.max_frame_bytes)

    def greet(self, head: bytes = b"") -> None:
        """Go live (the session is authenticated): `head`, then the greeting frame."""
        greeting = self.hub.went_live(self)
        metrics = self.hub.metrics
        metrics.frames_sent += 1
        metrics.bytes_sent += len(greeting)
        self.deliver(head + greeting if head else greeting)

    # -- frames -------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self.partial = bytearray(frame.data) if opcode is Opcode.TEXT else None
                if opcode is Opcode.BINARY:
                    self._error(ClientError("binary-not-supported"))
                return
            if opcode is Opcode.BINARY:
                self._error(ClientError("binary-not-supported"))
                return
            self._on_text(bytes(frame.data))
        elif opcode is Opcode.CONT:
            if self.partial is None:
                return  # the rest of a refused binary message
            self.partial += frame.data
            if frame.fin:
                data, self.partial = bytes(self.partial), None
                self._on_text(data)

    def _on_text(self, data: bytes) -> None:
        if self.session.state is SessionState.CLOSED:
            return
        s = self.hub.settings
        if self.bucket is None:
            self.bucket = TokenBucket(s.rate_burst, self.last_recv)
        verdict = self.bucket.take(s.rate_limit, s.rate_burst, self.last_recv)
        if verdict is not Verdict.ALLOW:
            self.hub.metrics.rate_limited += 1
            if verdict is Verdict.CLOSE:
                log.warning("closing %s: rate limit exceeded", self.session.connection_id)
                self.close(1008, "rate limit exceeded")
            else:
                self._error(ClientError("rate-limited"))
            return
        try:
            frame = decode_client_frame(data)
        except ClientError as exc:
            self._error(exc)
            return
        self.hub.handle(self, frame)

    def _error(self, exc: ClientError) -> None:
        self.send(error_frame(exc))


class AdminConnection(Connection):
    """A connection to the admin listener (NOTIFYD_ADMIN_PORT): plain HTTP only, no
    WebSocket upgrade; the Hub answers only health and metrics there."""

    __slots__ = ()

    def _on_request(self, request: Request) -> None:
        self.hub.http(self, request.method, request.path, request.headers)


def connection_factory(hub: Hub, clock: Callable[[], float],
                       admin: bool = False) -> Callable[[], Connection]:
    kind = AdminConnection if admin else Connection

    def make() -> Connection:
        return kind(hub, clock())
    return make
