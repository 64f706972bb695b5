"""The application behind every connection: the Hub that edge/server.py calls (opened,
admit, went_live, handle, http, closed, gone). It dispatches client events (the operations are
operations.py's, admission admission.py's, subscriptions and initial state subscriptions.py's)
and owns a connection's life: going live, a fresh token, a sync's hold-back, presence fan-out
to watchers, and the single timer for deadlines and keepalive pings (decided by
core/keepalive.py). Composition and life cycle of the process are app.py's; this module never
binds a socket nor queries the database but through the modules it calls."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from websockets.datastructures import Headers

from notifyd import PROTOCOL_VERSION
from notifyd.admission import Admission
from notifyd.cluster import ClusterPresence
from notifyd.config import Settings
from notifyd.core import keepalive
from notifyd.core.auth import Identity
from notifyd.core.codes import CloseCode, ErrorCode, close_label
from notifyd.core.errors import AuthError, ClientError, ConnectionLimit
from notifyd.core.keepalive import Act
from notifyd.core.limits import MAX_OPERATIONS
from notifyd.core.presence import PresenceChange
from notifyd.core.protocol import (
    Auth,
    ClientFrame,
    Ping,
    SyncRequest,
    encode,
    error_frame,
    format_epoch,
    format_time,
    websocket_text,
)
from notifyd.core.session import State
from notifyd.core.timers import TimerWheel
from notifyd.edge.http_api import HttpAnswer, HttpApi
from notifyd.edge.server import AdminConnection, Connection
from notifyd.operations import BY_EVENT, Operations
from notifyd.ops.metrics import Metrics
from notifyd.subscriptions import Subscriptions

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1  # resolution of the timing wheel
# Connections checked per turn of the loop: those opened in the same seconds (a storm, a
# deploy) are due together, for their pings and, with tokens issued together, their expiry;
# checked all at once they would hold deliveries back for as long as that takes.
TICK_BATCH = 64


def _now_iso() -> str:
    return format_time(dt.datetime.now(dt.UTC))


class Hub:
    """What connections call in to (edge/server.py's Hub), for one process."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        subscriptions: Subscriptions,
        presence: ClusterPresence,
        http_api: HttpApi,
        operations: Operations,
        admission: Admission,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.subscriptions = subscriptions
        self.presence = presence
        self.http_api = http_api
        self.operations = operations
        self.spawn = spawn
        self.admission = admission
        self.connections: set[Connection] = set()
        # plain HTTP connections whose /v1 answer is on its way: done() once they close
        self._answering: dict[Connection, Callable[[], None]] = {}
        self.timers: TimerWheel[Connection] = TimerWheel(time.monotonic(), TICK_SECONDS)

    async def tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            while self.tick(loop.time(), time.time(), TICK_BATCH):
                await asyncio.sleep(0)  # deliveries and reads go between the batches

    def admit(self, token: str) -> Identity:
        return self.admission.admit(token)

    def opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.timers.schedule(conn, conn.deadline)

    def went_live(self, conn: Connection, ref: str | None = None) -> bytes:
        identity = conn.session.identity
        assert identity is not None
        self.subscriptions.add(conn, identity)
        self.metrics.connections_opened += 1
        if log.isEnabledFor(logging.INFO):
            log.info(
                "connection open",
                extra={
                    "conn": conn.session.connection_id,
                    "user": identity.user_id,
                    "roles": list(identity.roles),
                    "peer": conn.peer(),
                },
            )
        self.presence.connected(identity.user_id, identity.roles)
        loop = asyncio.get_running_loop()
        due = min(
            conn.last_recv + self.settings.ping_interval,
            loop.time() + identity.expires_at - time.time(),
        )
        if due < conn.deadline:  # e.g. a token expiring before the auth deadline
            conn.deadline = due
            self.timers.schedule(conn, due)
        return websocket_text(
            encode(
                "connection-confirmed",
                {
                    "userId": identity.user_id,
                    "roles": list(identity.roles),
                    "connectionId": conn.session.connection_id,
                    "serverTime": _now_iso(),
                    "protocolVersion": PROTOCOL_VERSION,
                },
                ref,
            )
        )

    def closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        identity = conn.session.identity
        if conn.upgraded:  # a WebSocket, not a plain HTTP request
            code, reason, by = conn.close_info()
            if identity is not None:  # counted like connections_opened: live ones
                self.metrics.closes[close_label(code)] += 1
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "connection closed",
                    extra={
                        "conn": conn.session.connection_id,
                        "user": identity.user_id if identity is not None else None,
                        "code": code,
                        "reason": reason,
                        "by": by,
                        "seconds": round(asyncio.get_running_loop().time() - conn.opened_at, 3),
                    },
                )
        if identity is None:
            return
        self.subscriptions.remove(conn, identity)
        self.presence.disconnected(identity.user_id)

    def http(self, conn: Connection, method: str, target: str, headers: Headers) -> None:
        self.spawn(self._http(conn, method, target, headers))

    async def _http(self, conn: Connection, method: str, target: str, headers: Headers) -> None:
        try:
            answer = await self.http_api.answer(
                method, target, headers, admin=isinstance(conn, AdminConnection)
            )
        except Exception:
            # the path only: the query may hold a token
            log.exception("%s %s failed", method, target.split("?", 1)[0][:200])
            answer = HttpAnswer(500, b"internal error\n", "text/plain; charset=utf-8")
        conn.respond(answer.status, answer.content_type, answer.body, answer.headers)
        if answer.done is not None:
            if conn.transport is None:  # gone meanwhile: gone() has been and gone
                answer.done()
            else:
                self._answering[conn] = answer.done

    def gone(self, conn: Connection) -> None:
        """The socket is closed: an HTTP answer has left the process (or never will)."""
        answered = self._answering.pop(conn, None)
        if answered is not None:
            answered()

    def handle(self, conn: Connection, frame: ClientFrame) -> None:
        event, session = frame.event, conn.session
        if session.state is State.AWAITING_AUTH:
            if not isinstance(event, Auth):
                self._refuse(conn, ClientError(ErrorCode.NOT_AUTHENTICATED), frame.ref)
                return
            try:
                identity = self.admit(event.token)
            except AuthError as exc:
                log.info("auth frame refused: %s", exc)
                conn.close(CloseCode.UNAUTHORIZED, str(exc)[:100])
                return
            except ConnectionLimit as exc:
                conn.close(CloseCode.POLICY_VIOLATION, str(exc))
                return
            conn.session.authenticate(identity)
            conn.greet(ref=frame.ref)
            return
        current = session.identity
        assert current is not None
        if isinstance(event, Ping):
            conn.send(encode("pong", self.operations.ping(event), frame.ref))
        elif isinstance(event, SyncRequest):
            self._start_sync(conn, event, frame.ref)
        elif isinstance(event, Auth):
            self._refresh(conn, event, frame.ref)
        else:
            route = BY_EVENT[type(event)]
            run = partial(route.run, self.operations, current, event, session.connection_id)
            self._answer(conn, frame.ref, route.answer, run)

    # -- client events ------------------------------------------------------------------

    def _refuse(self, conn: Connection, exc: ClientError, ref: str | None) -> None:
        exc.ref = ref
        conn.send(error_frame(exc))

    def _answer(
        self,
        conn: Connection,
        ref: str | None,
        kind: str,
        operation: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        """Runs a client operation (operations.py) in a task of its own and answers its frame
        with a `kind` frame of the data it returns. At most MAX_OPERATIONS of a connection at
        once: each holds a database connection of the shared pool while it runs, and a client
        must not hold them all."""
        session = conn.session
        if session.operations >= MAX_OPERATIONS:
            self._refuse(conn, ClientError(ErrorCode.TOO_MANY_OPERATIONS), ref)
            return
        session.operations += 1

        async def answer() -> None:
            try:
                conn.send(encode(kind, await operation(), ref))
            finally:
                session.operations -= 1

        self.spawn(self._answered(conn, ref, answer))

    async def _answered(
        self, conn: Connection, ref: str | None, operation: Callable[[], Awaitable[None]]
    ) -> None:
        """Runs a client operation that answers its frame itself (made only here: a task
        cancelled before it starts leaves no coroutine unawaited); one refused is answered
        with its error, one that fails in a way it did not expect with `internal-error`
        instead of leaving the client waiting."""
        try:
            await operation()
        except ClientError as exc:
            self._refuse(conn, exc, ref)
        except Exception:
            log.exception("a client operation failed on connection %s", conn.session.connection_id)
            self._refuse(conn, ClientError(ErrorCode.INTERNAL_ERROR), ref)

    def _refresh(self, conn: Connection, event: Auth, ref: str | None) -> None:
        """A fresh token on a live connection: same user only. It extends the connection, and
        its roles replace the connection's: the streams of roles it lacks stop at once, those of
        roles it adds start live from now, and presence rights follow the new roles."""
        before = conn.session.identity
        assert before is not None
        try:
            identity = conn.session.authenticate(self.admission.verify(event.token))
        except AuthError as exc:
            self._refuse(conn, ClientError(ErrorCode.AUTH_FAILED, str(exc)), ref)
            return
        except ClientError as exc:
            self._refuse(conn, exc, ref)
            return
        self.subscriptions.change(conn, before, identity)
        # A token expiring before the connection's next check (expiry is checked with it).
        due = asyncio.get_running_loop().time() + identity.expires_at - time.time()
        if due < conn.deadline:
            conn.deadline = due
            self.timers.schedule(conn, due)
        conn.send(
            encode(
                "auth:refreshed",
                {"expiresAt": format_epoch(identity.expires_at), "roles": list(identity.roles)},
                ref,
            )
        )

    def _start_sync(self, conn: Connection, req: SyncRequest, ref: str | None) -> None:
        """Live items of the synced streams are held back from now until the response is
        out (session.begin_sync), so they follow it in seq order."""
        session = conn.session
        identity = session.identity
        assert identity is not None
        try:
            streams = self.operations.sync_streams(identity, req, "websocket")
            session.begin_sync(streams)
        except ClientError as exc:
            self._refuse(conn, exc, ref)
            return
        self.spawn(self._answered(conn, ref, partial(self._sync, conn, req, ref, streams)))

    async def _sync(
        self, conn: Connection, req: SyncRequest, ref: str | None, streams: list[str]
    ) -> None:
        session = conn.session
        identity = session.identity
        assert identity is not None
        try:
            synced = await self.operations.sync(
                req, streams, identity.user_stream, session.in_flight()
            )
        except BaseException:
            self._release(conn, session.abort_sync())
            raise
        conn.send(encode("notification:sync-response", synced.data, ref))
        self._release(conn, session.finish_sync(synced.cursors, synced.has_more, synced.fresh))

    def _release(self, conn: Connection, frames: list[bytes]) -> None:
        """Deliver the live frames a sync held back, counted."""
        for frame in frames:
            conn.deliver(frame)
        self.metrics.count_sent(len(frames), sum(map(len, frames)))

    def presence_changed(self, change: PresenceChange) -> None:
        """Tell this process's watchers (never the user about themselves)."""
        watchers = self.subscriptions.watchers()
        if not watchers:
            return
        kind = "presence:online" if change.online else "presence:offline"
        frame = websocket_text(
            encode(
                kind,
                {
                    "userId": change.user_id,
                    "roles": list(change.roles),
                    "at": format_epoch(change.at),
                },
            )
        )
        sent = 0
        for watcher in list(watchers):
            watcher_identity = watcher.session.identity
            if watcher_identity is not None and watcher_identity.user_id != change.user_id:
                watcher.deliver(frame)
                sent += 1
        self.metrics.count_sent(sent, sent * len(frame))

    def tick(self, now: float, wall: float, limit: int | None = None) -> bool:
        """Deadlines and keepalive of the connections that are due, from one timer: at most
        `limit` of them; True when that left some due."""
        popped = self.timers.pop_due(now, limit)
        for conn in popped:
            if conn.session.state is State.CLOSED or now + TICK_SECONDS < conn.deadline:
                continue  # closed, or a stale entry: the connection is due later
            try:
                due = self._check_deadlines(conn, now, wall)
            except Exception:  # pragma: no cover - a bug must not drop it from the wheel
                log.exception("deadline check failed for %s", conn.session.connection_id)
                due = now + 1.0
            if due is not None:
                conn.deadline = due
                self.timers.schedule(conn, due)
        return limit is not None and len(popped) == limit

    def _check_deadlines(self, conn: Connection, now: float, wall: float) -> float | None:
        """Acts on what is due for `conn` (core.keepalive decides); returns when to look again
        (None: it was closed)."""
        s = self.settings
        identity = conn.session.identity
        decision = keepalive.decide(
            now=now,
            wall=wall,
            deadline=conn.deadline,
            expires_at=identity.expires_at if identity is not None else None,
            websocket_open=conn.is_open,
            last_recv=conn.last_recv,
            ping_sent=conn.ping_sent,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
        )
        act = decision.act
        if act is Act.PING:
            conn.ping(now)
        elif act is Act.CLOSE:
            conn.close(decision.code, decision.reason)
        elif act is Act.ABORT:
            conn.abort()
        return decision.due
