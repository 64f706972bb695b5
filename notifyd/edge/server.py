"""The network edge: one small asyncio.Protocol per TCP connection driving websockets' sans-I/O
ServerProtocol (no task per connection), plain HTTP requests handed to the Hub, and the
translation of errors into frames, HTTP statuses and close codes. It owns what a connection
may cost: the send bound (every byte written counts), the rate limit on every client frame,
and the closing handshake (RFC 6455 §7.1.1) with its grace. Application logic lives in the
Hub (hub.py); this module never touches PostgreSQL.

The only module that reads or writes the clients' sockets (app.py binds the listening ones);
imports nothing of PostgreSQL (asyncpg) or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
import uuid
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol as TypingProtocol
from typing import cast
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeaderValue
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, SERVER, Protocol, State
from websockets.server import ServerProtocol
from websockets.typing import Origin

from notifyd.config import Settings
from notifyd.core.auth import Identity, token_from
from notifyd.core.codes import CloseCode, ErrorCode
from notifyd.core.errors import AuthError, ClientError, ConnectionLimit
from notifyd.core.limits import CloseGrace, TokenBucket, Verdict
from notifyd.core.protocol import ClientFrame, decode_client_frame, error_frame, websocket_text
from notifyd.core.session import Session
from notifyd.core.session import State as SessionState
from notifyd.ops.metrics import Metrics

log = logging.getLogger(__name__)
# websockets logs every open and close at INFO; notifyd logs its own lines instead.
logging.getLogger("websockets").setLevel(logging.WARNING)

# A closing connection keeps its socket until the client has taken every byte still waiting
# for it (in this process and in the kernel) and closed too; it is reset (RST, both queues
# dropped) once CLOSE_GRACE seconds pass without the client taking a byte, and at the latest
# CLOSE_LIMIT seconds after the close. Looked at every CLOSE_CHECK seconds.
CLOSE_GRACE = 2.0
CLOSE_LIMIT = 30.0
CLOSE_CHECK = 0.5
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, frees the queue
# The transport's buffer pauses the connection above this many bytes (asyncio's and uvloop's
# default); frames written meanwhile wait in the connection's own backlog, which is dropped
# when the connection is closed for slowness.
SOCKET_HIGH_WATER = 65536
# TCP_NOTSENT_LOWAT: the kernel takes more from the process only while fewer bytes than this
# wait in it unsent, so what a client does not read piles up where the send bound sees it, not
# in megabytes of kernel buffer. Data in flight is not limited by it.
KERNEL_UNSENT = 65536
MAX_REQUEST_BYTES = 16384  # handshake request line and headers; websockets refuses larger


def tune_listener(sock: socket.socket | None) -> None:
    """Options of a listening socket that every connection it accepts inherits."""
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, KERNEL_UNSENT)


def kernel_queue(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel holds for the peer: not yet sent, or sent and not yet acknowledged
    (SIOCOUTQ). Bytes the peer's kernel has acknowledged are the peer's."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):  # closed meanwhile
        return 0
    queued: int = struct.unpack("i", answer)[0]
    return queued


class FrameProtocol(Protocol):
    """websockets' frame-level protocol, but a ping is not answered by itself: the connection
    answers it under the rate limit (a flood of pings must not become a flood of pongs)."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PING:
            self.events.append(frame)
        else:
            super().recv_frame(frame)


class Hub(TypingProtocol):
    """What a connection needs from the application (hub.Hub)."""

    settings: Settings
    metrics: Metrics

    def admit(self, token: str) -> Identity:
        """The identity of a token that may open a connection now; raises AuthError (a bad,
        expired or revoked token) or ConnectionLimit."""

    def opened(self, conn: Connection) -> None: ...
    def went_live(self, conn: Connection, ref: str | None = None) -> bytes:
        """Index the authenticated connection; returns its greeting (connection-confirmed,
        with the `ref` of the auth frame that authenticated it) as a frame for the caller to
        write."""

    def closed(self, conn: Connection) -> None: ...
    def gone(self, conn: Connection) -> None:
        """The socket is closed (after closed(): a closing connection keeps its socket until
        the client has what was written, or the grace runs out)."""

    def handle(self, conn: Connection, frame: ClientFrame) -> None: ...
    def http(self, conn: Connection, method: str, target: str, headers: Headers) -> None: ...


class Connection(asyncio.Protocol):
    """One client: handshake or HTTP request, then WebSocket frames in and out.

    Sending: frames go straight to the transport while its buffer is under its high-water mark
    (SOCKET_HIGH_WATER); above it (pause_writing) they wait in `backlog` until resume_writing.
    Before a frame (a pong, an error and the 101 too) joins the backlog, the bytes already
    waiting (backlog and transport buffer) are compared with NOTIFYD_MAX_SEND_BUFFER: over it,
    the client is closed with 4008 instead. So a connection holds at most the bound plus one
    frame, and a frame larger than the bound still reaches a client that reads. Closing for
    slowness drops the backlog (frames not begun), so the close frame follows at most what the
    transport holds; a frame in the transport is never cut.

    Closing (RFC 6455 §7.1.1): the close frame is the last thing written, the socket is
    half-closed behind it (FIN), and input is read and discarded until the client closes too;
    see CLOSE_GRACE for a client that does not.
    """

    __slots__ = (
        "backlog",
        "bucket",
        "close_timer",
        "closing",
        "deadline",
        "hub",
        "last_recv",
        "limited",
        "opened_at",
        "partial",
        "pending",
        "ping_sent",
        "queued",
        "session",
        "transport",
        "ws",
    )

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
        # A text message arriving in fragments (websockets bounds the whole message by
        # max_size), and whether one of its frames found the rate limit's bucket empty.
        self.partial: bytearray | None = None
        self.limited = False
        self.bucket: TokenBucket | None = None  # made on the first client frame
        self.backlog: deque[bytes] | None = None  # frames waiting while the transport is full
        self.queued = 0  # bytes in backlog
        self.closing: CloseGrace | None = None  # set once nothing more will be written
        self.close_timer: asyncio.TimerHandle | None = None
        # When the timer looks at this connection next: first the handshake and auth deadline,
        # then keepalive and token expiry (hub.Hub.tick).
        self.deadline = now + s.auth_timeout
        self.last_recv = now
        self.opened_at = now
        self.ping_sent = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        bound = self.hub.settings.max_send_buffer
        if bound < SOCKET_HIGH_WATER:  # what the transport holds stays within the bound
            self.transport.set_write_buffer_limits(high=bound, low=bound // 4)
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
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Request):
                self._on_request(event)
        self._flush()
        if ws.close_rcvd is not None:  # the closing handshake is complete
            self._close_if_delivered()

    def eof_received(self) -> bool | None:
        if self.pending is not None:
            self.pending = None
            self.abort()  # closed before sending a whole request
            return None
        self.ws.receive_eof()
        self._flush()  # ends the output: the client sends nothing more
        self._close_if_delivered()
        return True  # closed above, or once the client has the rest (or reset: CLOSE_GRACE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # gone: nothing left to send or reset
        self.backlog = None
        self.queued = 0
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self._ended()
        self.hub.gone(self)
        # websockets' parser is a generator holding its protocol, and the error that ended it
        # (a peer gone without a closing handshake) holds the generator's frame: reference
        # cycles. Broken here (no data comes any more), the connection is freed by reference
        # counting, not left to the cycle collector, which does not see it at all while it
        # is frozen (notifyd.ops.gcpolicy).
        ws = self.ws
        ws.parser.close()
        if ws.parser_exc is not None:
            ws.parser_exc.__traceback__ = None

    def pause_writing(self) -> None:
        if self.backlog is None and self.closing is None:
            self.backlog = deque()

    def resume_writing(self) -> None:
        backlog, transport = self.backlog, self.transport
        if backlog is None or transport is None:
            return
        self.backlog = None  # flowing: a pause_writing() during the writes below makes one
        while backlog:
            data = backlog.popleft()
            self.queued -= len(data)
            transport.write(data)
            if self.backlog is not None:  # full again: the rest waits, in order
                self.backlog = backlog
                return

    def _ended(self) -> None:
        if self.session.state is not SessionState.CLOSED:
            self.session.close()
            self.hub.closed(self)

    # -- sending ------------------------------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        """Write one pre-built WebSocket frame, uncounted: its sender counts what it delivers
        (Metrics.count_sent), a fan-out once for all its recipients (a count per recipient
        would be a third of the Python time per recipient). Called per recipient of every
        notification: keep it this cheap."""
        transport = self.transport
        if transport is None or self.ws.state is not OPEN:
            return
        if self.backlog is None:
            transport.write(frame)
        else:
            self._hold(frame)

    def _hold(self, data: bytes) -> None:
        """Keep `data` in the backlog (the transport is full), unless more than the send bound
        already waits for this client: then it is closed with 4008 instead. Only the close
        frame and a plain HTTP answer, written once the connection is no longer open, are
        kept whatever waits (the connection ends behind them)."""
        backlog, transport = self.backlog, self.transport
        assert backlog is not None and transport is not None
        if self.ws.state is OPEN:
            bound = self.hub.settings.max_send_buffer
            if self.queued + transport.get_write_buffer_size() > bound:
                self.hub.metrics.slow_consumer_closes += 1
                log.warning(
                    "closing slow consumer %s (more than %d bytes waiting)",
                    self.session.connection_id,
                    bound,
                )
                self.close(CloseCode.TOO_SLOW, "too slow: reconnect and sync", drop=True)
                return
        backlog.append(data)
        self.queued += len(data)

    def _write_out(self, data: bytes) -> None:
        """Write what websockets produced (the 101, an HTTP answer, pings, pongs, the close
        frame), in order with the frames, under the same bound."""
        transport = self.transport
        if transport is None or self.closing is not None:
            return
        if self.backlog is None:
            transport.write(data)
        else:
            self._hold(data)

    def send(self, payload: bytes) -> None:
        """Send one JSON message (an answer, an error) to this connection only, counted."""
        frame = websocket_text(payload)
        self.hub.metrics.count_sent(1, len(frame))
        self.deliver(frame)

    def close(self, code: int, reason: str, drop: bool = False) -> None:
        """Send a close frame and end the connection: it leaves the application at once; its
        socket stays until the client has what is queued for it and has closed too, or is
        reset (see CLOSE_GRACE). `drop`: frames not yet begun are dropped (too slow a client),
        so the close frame comes next."""
        ws = self.ws
        if ws.state is OPEN:
            if drop and self.backlog:
                self.backlog.clear()
                self.queued = 0
            ws.send_close(code, reason)
            self._flush()
        elif self.closing is None and self.transport is not None:
            self.transport.close()  # no WebSocket: a handshake or HTTP request left unanswered
        self._ended()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def reset(self) -> None:
        """Drop the connection now with everything queued for it, in this process and in the
        kernel: with SO_LINGER 0, closing the socket sends RST and frees its send queue."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.backlog = None
        self.queued = 0
        transport.abort()
        self._ended()

    def _end_output(self) -> None:
        """Nothing more is written: the close frame (or an HTTP answer, or nothing when the
        client went first) was the last. The backlog goes to the transport, the socket is
        half-closed behind it, and what the client still sends is read and discarded (data
        left unread would turn the close into a reset that loses the close frame) until it
        closes too or the grace runs out."""
        transport = self.transport
        if self.closing is not None or transport is None:
            return
        backlog, self.backlog, self.queued = self.backlog, None, 0
        for data in backlog or ():
            transport.write(data)
        self.backlog = None  # one made by a pause during those writes: nothing more comes
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client is gone already (a reset not yet seen)
                self.reset()
                return
        loop = asyncio.get_running_loop()
        self.closing = CloseGrace(self._waiting(transport), loop.time(), CLOSE_GRACE, CLOSE_LIMIT)
        self.close_timer = loop.call_later(CLOSE_CHECK, self._check_close)
        self._ended()

    def _waiting(self, transport: asyncio.Transport) -> int:
        """Bytes written for this client that it has not taken yet."""
        return self.queued + transport.get_write_buffer_size() + kernel_queue(transport)

    def _close_if_delivered(self) -> None:
        """The client is done (its close frame or EOF came after ours): close the socket once
        it has everything (the server closes the TCP connection first, RFC 6455 §7.1.1)."""
        transport = self.transport
        if transport is not None and self.closing is not None and not self._waiting(transport):
            transport.close()

    def _check_close(self) -> None:
        self.close_timer = None
        transport, grace = self.transport, self.closing
        if transport is None or grace is None:
            return
        waiting = self._waiting(transport)
        ws = self.ws
        if not waiting and (ws.close_rcvd is not None or ws.state is State.CLOSED):
            transport.close()
        elif grace.expired(waiting, asyncio.get_running_loop().time()):
            log.info(
                "resetting %s: %d bytes not taken by the client after its close",
                self.session.connection_id,
                waiting,
            )
            self.reset()
        else:
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_CHECK, self._check_close)

    @property
    def is_open(self) -> bool:
        """A WebSocket past its handshake and not closing: frames may be sent."""
        return self.ws.state is OPEN

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
        return CloseCode.ABNORMAL_CLOSURE, "connection lost", "network"

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
        ws = self.ws
        for chunk in ws.data_to_send():
            if chunk:
                self._write_out(chunk)
            else:  # EOF: websockets is done with this connection (an HTTP answer, a failure)
                self._end_output()
        if ws.close_sent is not None:  # a close frame, ours or the echo of the client's
            self._end_output()

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
            refused = ws.handshake_exc
            if isinstance(refused, InvalidHeaderValue) and refused.name == "Sec-WebSocket-Version":
                # RFC 6455 §4.4: name the version this server speaks
                response = ws.reject(426, "WebSocket protocol version 13 only\n")
                response.headers["Sec-WebSocket-Version"] = "13"
            ws.send_response(response)
            return
        s = self.hub.settings
        query = parse_qs(urlsplit(request.path).query)
        try:
            # the cookie only with an Origin allow-list: then a browser's page must be listed
            token, from_cookie = token_from(
                request.headers, query, s.jwt_cookie if s.allowed_origins else None
            )
        except ClientError as exc:
            log.info("handshake refused: %s", exc.message)
            ws.send_response(ws.reject(exc.status, f"{exc.message}\n"))
            return
        identity = None
        if token is not None:
            if from_cookie and request.headers.get("Origin") is None:
                # Browsers always send Origin; a cookie without one is not from an allowed page.
                ws.send_response(ws.reject(403, "cookie authentication needs an allowed Origin\n"))
                return
            try:
                identity = self.hub.admit(token)
            except AuthError as exc:
                log.info("handshake refused: %s", exc)
                ws.send_response(ws.reject(exc.status, f"{exc}\n"))
                return
            except ConnectionLimit as exc:
                ws.send_response(ws.reject(429, f"{exc}\n"))
                return
        if query.get("sync") == ["1"]:
            self.session.wait_for_sync()
        ws.send_response(response)
        # The 101 goes out before any frame written directly to the transport: with the
        # greeting, when the token came with the request (one system call, not two).
        head = b"".join(ws.data_to_send())
        self._upgrade()
        if identity is None:
            self._write_out(head)
            return
        self.session.authenticate(identity)
        self.greet(head)

    def respond(
        self, status: int, content_type: str, body: bytes, headers: list[tuple[str, str]]
    ) -> None:
        """The answer to a plain HTTP request (see http_api); the connection then closes."""
        ws = self.ws
        if self.transport is None or not isinstance(ws, ServerProtocol):
            return
        ws.send_response(
            Response(
                status,
                HTTPStatus(status).phrase,
                Headers(
                    [
                        ("Date", formatdate(usegmt=True)),
                        ("Content-Type", content_type),
                        ("Content-Length", str(len(body))),
                        ("Connection", "close"),
                        *headers,
                    ]
                ),
                body,
            )
        )
        self._flush()

    def _upgrade(self) -> None:
        """Replace the handshake protocol by a frame-level one. ServerProtocol's parser keeps
        the parsed request (headers and all, about 2.5 kB) alive for the life of the
        connection; the fresh Protocol starts clean. Nothing is lost: the handshake protocol
        was fed the request and nothing after it (see data_received). Its parser, a generator
        holding the protocol, is closed: a cycle the collector may have frozen (gcpolicy) would
        otherwise outlive the connection until the next thaw."""
        self.ws.parser.close()
        self.ws = FrameProtocol(SERVER, state=OPEN, max_size=self.hub.settings.max_frame_bytes)

    def greet(self, head: bytes = b"", ref: str | None = None) -> None:
        """Go live (the session is authenticated): `head`, then the greeting frame, which
        carries `ref` (that of the auth frame)."""
        greeting = self.hub.went_live(self, ref)
        self.hub.metrics.count_sent(1, len(greeting))
        self.deliver(head + greeting if head else greeting)

    # -- frames -------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.CLOSE or self.ws.state is not OPEN:
            return  # the client's close (websockets answers it), or input after a close
        # Every frame takes a token, control frames and fragments too: a refused ping gets
        # no pong, a message with a refused frame gets `rate-limited`.
        s = self.hub.settings
        bucket = self.bucket
        if bucket is None:
            bucket = self.bucket = TokenBucket(s.rate_burst, self.last_recv)
        verdict = bucket.take(s.rate_limit, s.rate_burst, self.last_recv)
        if verdict is not Verdict.ALLOW:
            self.hub.metrics.rate_limited += 1
            if verdict is Verdict.CLOSE:
                log.warning("closing %s: rate limit exceeded", self.session.connection_id)
                self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                return
        refused = verdict is Verdict.REFUSE
        if opcode is Opcode.TEXT:
            if frame.fin:
                self._on_text(bytes(frame.data), refused)
            else:
                self.partial, self.limited = bytearray(frame.data), refused
        elif opcode is Opcode.CONT:
            partial = self.partial
            if partial is None:
                return  # the rest of a binary message, refused at its first frame
            partial += frame.data
            self.limited = self.limited or refused
            if frame.fin:
                self.partial = None
                self._on_text(bytes(partial), self.limited)
        elif opcode is Opcode.BINARY:
            self.partial = None
            self._error(
                ClientError(ErrorCode.RATE_LIMITED if refused else ErrorCode.BINARY_NOT_SUPPORTED)
            )
        elif opcode is Opcode.PING and not refused:
            self.ws.send_pong(frame.data)  # flushed by _receive
        # a pong needs nothing

    def _on_text(self, data: bytes, refused: bool) -> None:
        if self.session.state is SessionState.CLOSED:
            return
        try:
            frame = decode_client_frame(data)
        except ClientError as exc:
            if exc.code is ErrorCode.INVALID_JSON and not _is_utf8(data):
                # RFC 6455 §8.1: a text message that is not UTF-8 fails the connection
                self.close(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
                return
            self._error(_rate_limited(exc.ref) if refused else exc)
            return
        if refused:  # decoded all the same, for its ref
            self._error(_rate_limited(frame.ref))
            return
        self.hub.handle(self, frame)

    def _error(self, exc: ClientError) -> None:
        self.send(error_frame(exc))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _rate_limited(ref: str | None) -> ClientError:
    exc = ClientError(ErrorCode.RATE_LIMITED)
    exc.ref = ref
    return exc


class AdminConnection(Connection):
    """A connection to the admin listener (NOTIFYD_ADMIN_PORT): plain HTTP only, no
    WebSocket upgrade; the Hub answers only health and metrics there."""

    __slots__ = ()

    def _on_request(self, request: Request) -> None:
        self.hub.http(self, request.method, request.path, request.headers)


def connection_factory(
    hub: Hub, clock: Callable[[], float], admin: bool = False
) -> Callable[[], Connection]:
    kind = AdminConnection if admin else Connection

    def make() -> Connection:
        return kind(hub, clock())

    return make
