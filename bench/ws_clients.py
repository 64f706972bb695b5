"""WebSocket load generator: one process holding thousands of client connections, each a bare
asyncio.Protocol on uvloop driving websockets' sans-I/O ClientProtocol (no task, no queue per
connection), driven by run.py over a pipe; it timestamps every notification as it is read.
It speaks notifyd's protocol, or Socket.IO 4 (Engine.IO v4 text packets over a WebSocket) to
the peers in bench/peers/, with the same lean connections for both.

Why not notifyd.client, the one Python client loop (which the chaos run's devices and the
tests use): this process is what the benchmark measures against. notifyd.client costs per
connection a reader task, a queue, a websockets asyncio connection and a JSON decode of every
frame; here one Python process holds thousands of connections and must read every frame at the
rate the daemon sends them, or the figures measure the client instead of the server. So a
connection is a Protocol whose receive path only looks for a byte mark in the payload's head
and timestamps it. Nor does it need the loop: it never reconnects, its one sync-request (the
reconnect storm's) is checked against exactly what its user missed, and lost or duplicated
items are counted by the runs that look for them (bench/chaos.py, tests/test_faults.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any, cast

import infra
import orjson
import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import WebSocketURI, parse_uri

from notifyd.core.auth import issue_token

CLIENT_NICE = 10
HANDSHAKE_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
NEW_MARK = b'"notification:new"'
SYNC_MARK = b'"notification:sync-response"'
GREETING = (b"connection-confirmed", b"notification:unread-count")
TEXT, CONT, CLOSE = Opcode.TEXT, Opcode.CONT, Opcode.CLOSE
OPEN = State.OPEN


class Conn(asyncio.Protocol):
    """One client connection. Reads everything the server sends and answers only what the
    protocol itself must (close and pong frames, which the ClientProtocol queues); the text
    frames it looks into are the greeting and notification:new."""

    __slots__ = ("cursors", "greeted", "opened", "own", "parts", "pool", "transport", "user", "ws")
    GREETING: tuple[bytes, ...] = GREETING

    def __init__(
        self,
        pool: ClientPool,
        user: str,
        uri: WebSocketURI,
        opened: asyncio.Future[None],
        cursors: dict[str, int] | None = None,
    ) -> None:
        self.pool = pool
        self.user = user
        self.own = f"user:{user}"
        self.ws = ClientProtocol(uri, max_size=None)
        # done once the greeting arrived, or with `cursors` once the sync-response did (or
        # when the attempt failed)
        self.opened = opened
        self.cursors = cursors  # a sync-request to send once greeted (None: none)
        self.greeted = 0  # greeting frames seen so far; len(GREETING) when ready
        self.parts: bytearray | None = None  # a fragmented message (the server sends none)
        self.transport: asyncio.Transport | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass of it
        self.pool.transports.add(self)
        self.ws.send_request(self.ws.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        now = time.time()  # before any parsing: every frame of this read arrived now
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        pool = self.pool
        pool.reads += 1
        pool.frames += len(events)  # the handshake response counts once per connection
        for event in events:
            if type(event) is not Frame:
                self.handshake(event)
                continue
            opcode = event.opcode
            if opcode is TEXT:
                if event.fin:  # received frames hold a bytearray, never a memoryview
                    self.text(cast(bytearray, event.data), now)
                else:
                    self.parts = bytearray(event.data)
            elif opcode is CONT:
                if self.parts is not None:
                    self.parts += event.data
                    if event.fin:
                        payload, self.parts = self.parts, None
                        self.text(payload, now)
            elif opcode is CLOSE:
                self.pool.gone(self)
            # ping, pong, binary: nothing of ours (the protocol queues the pong itself)
        if ws.writes:
            self.flush()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self.flush()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.transports.discard(self)
        if not self.opened.done():
            why = (
                self.ws.handshake_exc
                or exc
                or ConnectionError(
                    f"closed before the greeting ({self.greeted} of {len(self.GREETING)} frames)"
                )
            )
            self.opened.set_exception(why)
        self.pool.gone(self)

    # -- ours ------------------------------------------------------------------------------

    def flush(self) -> None:
        transport = self.transport
        assert transport is not None
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def handshake(self, response: object) -> None:
        if not isinstance(response, Response) or self.ws.handshake_exc is not None:
            self.fail(self.ws.handshake_exc or RuntimeError(f"unexpected event {response!r}"))

    def text(self, payload: bytes | bytearray, now: float) -> None:
        pool = self.pool
        if self.greeted == len(self.GREETING):
            if NEW_MARK in payload[:48]:
                pool.new(self, payload, now)
            elif self.cursors is not None and SYNC_MARK in payload[:48]:
                self.synced(orjson.loads(payload)["data"], now)
            return  # unread counts and the like
        self.greet(payload)

    def greet(self, payload: bytes | bytearray) -> None:
        """The greeting frames, in order (notifyd: connection-confirmed, the unread count)."""
        expected = self.GREETING[self.greeted]
        if expected not in payload[:64]:
            got = bytes(payload[:80]).decode(errors="replace")
            self.fail(RuntimeError(f"expected {expected.decode()}, got {got}"))
            return
        self.greeted += 1
        if self.greeted == len(self.GREETING) and not self.opened.done():
            if self.cursors is not None:
                self.send_sync(self.cursors)
                return
            self.pool.ready(self)
            self.opened.set_result(None)

    def send_sync(self, cursors: dict[str, int]) -> None:
        self.ws.send_text(
            orjson.dumps(
                {"type": "notification:sync-request", "data": {"cursors": cursors}, "ref": "storm"}
            )
        )

    def synced(self, data: Any, now: float) -> None:
        """The sync-response: checked against what this user missed; then the connection is
        ready like any other."""
        self.cursors = None
        self.pool.synced(self, data, now)
        if not self.opened.done():
            self.pool.ready(self)
            self.opened.set_result(None)

    @staticmethod
    def notification(payload: bytes | bytearray) -> Any:
        return orjson.loads(payload)["data"]["notification"]

    def fail(self, exc: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class SioConn(Conn):
    """A Socket.IO 4 client over the WebSocket transport alone: Engine.IO v4 text packets
    (0 open, 2 ping -> 3 pong, 4 message) carrying Socket.IO packets (0 connect, with the token
    as auth; 2 event; 4 connect error). Ready once the server's connection-confirmed event
    arrives; events are `42["notification:new",{"notification":{...}}]`."""

    __slots__ = ("token",)
    GREETING = (b"connection-confirmed",)
    token: str  # the JWT for the connect packet, set by the pool

    def text(self, payload: bytes | bytearray, now: float) -> None:
        kind = payload[:2]
        if kind == b"42":
            if self.greeted == len(self.GREETING):
                if NEW_MARK in payload[:28]:
                    self.pool.new(self, payload, now)
                elif self.cursors is not None and SYNC_MARK in payload[:34]:
                    self.synced(orjson.loads(payload[2:])[1], now)
            else:
                self.greet(payload)
        elif kind[:1] == b"2":  # Engine.IO ping: answer, or the server drops us
            if self.ws.state is OPEN:  # not while our close is under way
                self.ws.send_text(b"3")
        elif kind[:1] == b"0":  # Engine.IO open: connect to the namespace, token as auth
            self.ws.send_text(b'40{"token":"' + self.token.encode() + b'"}')
        elif kind == b"44":  # connect error (the server's auth refused)
            self.fail(RuntimeError(f"socket.io connect error: {bytes(payload[:120])!r}"))
        # 40 (connected), 41 (disconnect) and the rest: nothing to do

    def send_sync(self, cursors: dict[str, int]) -> None:
        self.ws.send_text(b"42" + orjson.dumps(["notification:sync-request", {"cursors": cursors}]))

    @staticmethod
    def notification(payload: bytes | bytearray) -> Any:
        return orjson.loads(payload[2:])[1]["notification"]


PROTOCOLS: dict[str, type[Conn]] = {"notifyd": Conn, "socketio": SioConn}


class ClientPool:
    """The connections of one load-generator process and what they received."""

    def __init__(self, url: str, secret: str, concurrency: int, protocol: str = "notifyd") -> None:
        self.conn_class = PROTOCOLS[protocol]
        self.url = url
        self.secret = secret
        self.concurrency = concurrency
        self.conns: dict[str, Conn] = {}  # greeted and not closed by the server
        self.transports: set[Conn] = set()  # every connection whose socket is open
        self.frames = 0  # frames received (pings and closes too), all connections, ever
        self.reads = 0  # socket reads (data_received calls) that brought them
        # notification:new on the user's own stream: id and receive time
        self.ids: list[int] = []
        self.times: list[float] = []
        self.users: list[str] = []  # the receiving connection's user
        # notification:new on stream `all`: id -> [count, first receive, last receive]
        self.broadcasts: dict[int, list[float]] = {}
        self.foreign: list[str] = []  # "user got stream" for frames of a stream not theirs
        self.malformed: list[str] = []  # notification:new frames without an id or stream
        self.dropped: dict[str, int] = {}  # close code -> connections the server ended
        self.closing = False
        # what a waiting command waits for: own-stream count, or (broadcast id, count)
        self.want_own = 0
        self.want_broadcast: tuple[int, int] = (0, 0)
        self.waiter: asyncio.Future[None] | None = None
        # the reconnect storm: each user's missed notification ids, and what the syncs brought
        self.missed: dict[str, set[int]] = {}
        self.sync_times: list[float] = []
        self.sync_problems: Counter[str] = Counter()
        self.sync_examples: list[str] = []

    async def handle(self, command: str, args: Sequence[Any]) -> Any:
        if command == "connect":
            return await self.connect(*args)
        if command == "drain":
            return await self.drain(*args)
        if command == "await_broadcast":
            return await self.await_broadcast(*args)
        if command == "stats":
            return self.stats()
        if command == "drop":
            return self.drop()
        if command == "storm":
            return await self.storm(*args)
        if command == "close":
            return await self.close(*args)
        raise ValueError(f"unknown command {command!r}")

    # -- commands -------------------------------------------------------------------------

    async def connect(
        self, users: list[str], cursors: dict[str, dict[str, int]] | None = None
    ) -> dict[str, Any]:
        """Open one authenticated connection per user, `concurrency` handshakes at a time;
        each counts once its connection-confirmed and unread-count frames arrived (with
        `cursors`, user -> its sync-request's cursors: once its sync-response arrived)."""
        gate = asyncio.Semaphore(self.concurrency)
        tokens = [self._token(user) for user in users]  # not the server's time: before the clock
        started, started_at = time.monotonic(), time.time()
        results = await asyncio.gather(
            *(
                self._open(user, token, gate, cursors[user] if cursors else None)
                for user, token in zip(users, tokens, strict=True)
            ),
            return_exceptions=True,
        )
        errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
        return {
            "opened": len(users) - len(errors),
            "failed": len(errors),
            "errors": sorted(set(errors))[:5],
            "seconds": time.monotonic() - started,
            "started_at": started_at,
            "live_users": list(self.conns) if errors else [],
            **self.stats(),
        }

    def drop(self) -> dict[str, Any]:
        """Cut every connection as a network failure would (TCP reset, no closing handshake),
        for the reconnect storm; the server learns of it from the reset."""
        conns = list(self.conns.values())
        self.conns.clear()
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()
        return {"dropped": len(conns)}

    async def storm(
        self, users: list[str], cursors: dict[str, dict[str, int]], missed: dict[str, list[int]]
    ) -> dict[str, Any]:
        """Reconnect every user at once (`concurrency` handshakes in flight), each sending a
        sync-request with its cursors once greeted: ready when its sync-response arrived,
        which must hold exactly the notifications in `missed[user]`, each once."""
        self.missed = {user: set(ids) for user, ids in missed.items()}
        self.sync_times = []
        self.sync_problems = Counter()
        self.sync_examples = []
        opened = await self.connect(users, cursors)
        return {
            **opened,
            "times": self.sync_times,
            "problems": dict(self.sync_problems),
            "problem_examples": self.sync_examples[:5],
        }

    async def drain(self, expected: int, timeout: float) -> dict[str, Any]:
        """Wait (bounded) until `expected` own-stream notifications arrived, then hand over
        and forget what was recorded."""
        if len(self.ids) < expected:
            self.want_own = expected
            await self._wait(timeout)
            self.want_own = 0
        ids, times, users = self.ids, self.times, self.users
        self.ids, self.times, self.users = [], [], []
        return {"ids": ids, "times": times, "users": users, **self.stats()}

    async def await_broadcast(self, nid: int, timeout: float) -> dict[str, Any]:
        """Wait (bounded) until every live connection has broadcast `nid`."""
        target = self.live()
        seen = self.broadcasts.get(nid)
        if seen is None or seen[0] < target:
            self.want_broadcast = (nid, target)
            await self._wait(timeout)
            self.want_broadcast = (0, 0)
        count, first, last = self.broadcasts.pop(nid, [0, 0.0, 0.0])
        return {
            "count": int(count),
            "expected": target,
            "first": first,
            "last": last,
            **self.stats(),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "live": self.live(),
            "frames": self.frames,
            "reads": self.reads,
            "dropped": dict(self.dropped),
            "foreign": len(self.foreign),
            "foreign_examples": self.foreign[:5],
            "malformed": len(self.malformed),
            "malformed_examples": self.malformed[:3],
        }

    async def close(
        self, users: list[str] | None = None, timeout: float = CLOSE_TIMEOUT
    ) -> dict[str, Any]:
        """Closing handshake on every connection, or on those of `users` (the server closes
        the sockets), for `timeout` at most; whatever of them is still open then is aborted."""
        if users is None:
            self.closing = True
            conns = list(self.conns.values())
            self.conns.clear()
        else:
            conns = [c for c in map(self.conns.pop, users, [None] * len(users)) if c]
        for conn in conns:
            if conn.ws.state is OPEN:
                conn.ws.send_close(1000)
                conn.flush()
        closing = set(conns) if users is not None else self.transports
        deadline = time.monotonic() + timeout
        while (closing & self.transports) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lingering = list(closing & self.transports)
        for conn in lingering:
            if conn.transport is not None:
                conn.transport.abort()
        return {"closed": len(conns), "aborted": len(lingering)}

    def live(self) -> int:
        return len(self.conns)

    # -- called by the connections ------------------------------------------------------------

    def ready(self, conn: Conn) -> None:
        self.conns[conn.user] = conn

    def gone(self, conn: Conn) -> None:
        """The server closed `conn` (close frame, or the socket went): counted once."""
        if self.conns.get(conn.user) is not conn:
            return  # not open yet, already counted, or closed by us
        del self.conns[conn.user]
        if not self.closing:
            close = conn.ws.close_rcvd
            key = str(close.code) if close is not None else "no close frame"
            self.dropped[key] = self.dropped.get(key, 0) + 1
        self._check()  # a broadcast wait may now be complete

    def synced(self, conn: Conn, data: Any, now: float) -> None:
        """A storm connection's sync-response: what it brought against what the user missed
        (the notifications committed while it was away)."""
        self.sync_times.append(now)
        expected = self.missed.pop(conn.user, set())
        try:
            got = [n["id"] for n in data["notifications"]]
            more = bool(data.get("hasMore"))
        except (LookupError, TypeError) as exc:
            self._sync_problem("malformed", f"{conn.user}: {exc!r} in {str(data)[:120]}")
            return
        if len(set(got)) < len(got):
            self._sync_problem("duplicates", f"{conn.user}: {got}")
        if expected - set(got):
            self._sync_problem("missing", f"{conn.user}: {sorted(expected - set(got))}")
        if set(got) - expected:
            self._sync_problem("unexpected", f"{conn.user}: {sorted(set(got) - expected)}")
        if more:
            self._sync_problem("hasMore", f"{conn.user}: hasMore with {len(got)} items")

    def _sync_problem(self, kind: str, example: str) -> None:
        self.sync_problems[kind] += 1
        if len(self.sync_examples) < 5:
            self.sync_examples.append(f"{kind}: {example}")

    def new(self, conn: Conn, payload: bytes | bytearray, now: float) -> None:
        try:
            notification = conn.notification(payload)
            stream = notification["stream"]
            nid = notification["id"]
        except (ValueError, LookupError, TypeError) as exc:
            self.malformed.append(f"{conn.user}: {exc!r} in {bytes(payload[:120])!r}")
            return
        if stream == conn.own:
            self.ids.append(nid)  # drain() replaces the lists
            self.times.append(now)
            self.users.append(conn.user)
            if self.want_own and len(self.ids) >= self.want_own:
                self._done()
        elif stream == "all":
            seen = self.broadcasts.get(nid)
            if seen is None:
                seen = self.broadcasts[nid] = [1, now, now]
            else:
                seen[0] += 1
                if now > seen[2]:
                    seen[2] = now
            if nid == self.want_broadcast[0] and seen[0] >= self.want_broadcast[1]:
                self._done()
        else:
            self.foreign.append(f"{conn.user} got {stream}")

    # -- waiting ------------------------------------------------------------------------------

    async def _wait(self, timeout: float) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.waiter
        except TimeoutError:
            pass  # the answer says how many arrived
        finally:
            self.waiter = None

    def _done(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _check(self) -> None:
        """After a drop: a broadcast wait needs no more than the connections left."""
        nid, target = self.want_broadcast
        if nid and self.broadcasts.get(nid, [0])[0] >= min(target, self.live()):
            self._done()

    # -- connections ----------------------------------------------------------------------

    def _token(self, user: str) -> str:
        return issue_token(self.secret, user, ["user"], 3600)

    async def _open(
        self, user: str, token: str, gate: asyncio.Semaphore, cursors: dict[str, int] | None = None
    ) -> None:
        kind = self.conn_class
        # Socket.IO sends the token in its connect packet; notifyd takes it in the query, and
        # with sync=1 holds live notifications until it has answered the sync-request
        query = "" if kind is SioConn else f"?token={token}" + ("&sync=1" if cursors else "")
        uri = parse_uri(self.url + query)
        loop = asyncio.get_running_loop()
        async with gate:
            opened: asyncio.Future[None] = loop.create_future()
            made: list[Conn] = []

            def factory() -> Conn:
                conn = kind(self, user, uri, opened, cursors)
                if isinstance(conn, SioConn):
                    conn.token = token
                made.append(conn)
                return conn

            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    await loop.create_connection(factory, uri.host, uri.port)
                    await opened
            except BaseException:
                opened.cancel()  # a late outcome is not ours to report
                for conn in made:
                    if conn.transport is not None:
                        conn.transport.abort()
                raise


def main(pipe: Pipe, url: str, secret: str, concurrency: int, protocol: str = "notifyd") -> None:
    """Process entry point (multiprocessing, spawn). `protocol`: notifyd or socketio."""
    infra.worker_setup()
    # The daemon is what is measured. In production its clients are on other machines; here
    # they share two cores with it, so they yield the CPU to it rather than preempt it in the
    # middle of a fan-out. This can only make the latency figures worse (clients wake later).
    os.nice(CLIENT_NICE)
    pool = ClientPool(url, secret, concurrency, protocol)
    uvloop.run(infra.command_loop(pipe, pool.handle))
