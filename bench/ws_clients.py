# WebSocket load generator: one process holding thousands of client connections (websockets'
# asyncio client on uvloop), driven by run.py over a pipe; it timestamps every notification.
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

import infra
import jwt
import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

HANDSHAKE_TIMEOUT = 30.0
NEW_MARK = b'"notification:new"'
POLL = 0.002  # how often a waiting command looks at the counters


class ClientPool:
    """The connections of one load-generator process and what they received."""

    def __init__(self, url: str, secret: str, concurrency: int) -> None:
        self.url = url
        self.secret = secret
        self.concurrency = concurrency
        self.conns: dict[str, ClientConnection] = {}
        self.readers: set[asyncio.Task[None]] = set()
        # notification:new on the user's own stream: id and receive time
        self.ids: list[int] = []
        self.times: list[float] = []
        self.users: list[str] = []  # the receiving connection's user
        # notification:new on stream `all`: id -> [count, first receive, last receive]
        self.broadcasts: dict[int, list[float]] = {}
        self.foreign: list[str] = []  # "user got stream" for frames of a stream not theirs
        self.dropped: dict[str, int] = {}  # close code -> connections the server ended
        self.closing = False

    async def handle(self, command: str, args: Sequence[Any]) -> Any:
        if command == "connect":
            return await self.connect(*args)
        if command == "drain":
            return await self.drain(*args)
        if command == "await_broadcast":
            return await self.await_broadcast(*args)
        if command == "stats":
            return self.stats()
        if command == "close":
            return await self.close()
        raise ValueError(f"unknown command {command!r}")

    # -- commands -------------------------------------------------------------------------

    async def connect(self, users: list[str]) -> dict[str, Any]:
        """Open one authenticated connection per user, `concurrency` handshakes at a time;
        each counts once its connection-confirmed and unread-count frames arrived."""
        gate = asyncio.Semaphore(self.concurrency)
        started = time.monotonic()
        results = await asyncio.gather(*(self._open(user, gate) for user in users),
                                       return_exceptions=True)
        errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
        return {"opened": len(users) - len(errors), "failed": len(errors),
                "errors": sorted(set(errors))[:5], "seconds": time.monotonic() - started,
                "live_users": list(self.conns) if errors else []}

    async def drain(self, expected: int, timeout: float) -> dict[str, Any]:
        """Wait (bounded) until `expected` own-stream notifications arrived, then hand over
        and forget what was recorded."""
        deadline = time.monotonic() + timeout
        while len(self.ids) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        ids, times, users = self.ids, self.times, self.users
        self.ids, self.times, self.users = [], [], []
        return {"ids": ids, "times": times, "users": users, **self.stats()}

    async def await_broadcast(self, nid: int, timeout: float) -> dict[str, Any]:
        """Wait (bounded) until every live connection has broadcast `nid`."""
        deadline = time.monotonic() + timeout
        target = self.live()
        while time.monotonic() < deadline:
            seen = self.broadcasts.get(nid)
            if seen is not None and seen[0] >= target:
                break
            await asyncio.sleep(POLL)
        count, first, last = self.broadcasts.pop(nid, [0, 0.0, 0.0])
        return {"count": int(count), "expected": target, "first": first, "last": last}

    def stats(self) -> dict[str, Any]:
        return {"live": self.live(), "dropped": dict(self.dropped),
                "foreign": len(self.foreign), "foreign_examples": self.foreign[:5]}

    async def close(self) -> dict[str, Any]:
        self.closing = True
        conns = list(self.conns.values())
        self.conns.clear()
        if conns:
            closing = [asyncio.ensure_future(ws.close()) for ws in conns]
            await asyncio.wait(closing, timeout=10)
            for ws in conns:
                ws.transport.abort()
        for task in list(self.readers):
            task.cancel()
        return {"closed": len(conns)}

    def live(self) -> int:
        return sum(1 for ws in self.conns.values() if ws.state is State.OPEN)

    # -- connections ----------------------------------------------------------------------

    async def _open(self, user: str, gate: asyncio.Semaphore) -> None:
        token = jwt.encode({"sub": user, "roles": ["user"], "exp": int(time.time()) + 3600},
                           self.secret, algorithm="HS256")
        async with gate:
            ws = await connect(f"{self.url}?token={token}", compression=None,
                               ping_interval=None, max_queue=None,
                               open_timeout=HANDSHAKE_TIMEOUT, close_timeout=2)
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    for expected in ("connection-confirmed", "notification:unread-count"):
                        kind = orjson.loads(await ws.recv(decode=False)).get("type")
                        if kind != expected:
                            raise RuntimeError(f"expected {expected}, got {kind}")
            except BaseException:
                ws.transport.abort()
                raise
        self.conns[user] = ws
        task = asyncio.get_running_loop().create_task(self._read(user, ws))
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    async def _read(self, user: str, ws: ClientConnection) -> None:
        own = f"user:{user}"
        broadcasts = self.broadcasts
        try:
            while True:
                raw = await ws.recv(decode=False)
                now = time.time()  # before any parsing
                if NEW_MARK not in raw[:48]:
                    continue  # unread counts, pings' replies and the like
                notification = orjson.loads(raw)["data"]["notification"]
                stream = notification["stream"]
                if stream == own:
                    self.ids.append(notification["id"])  # drain() replaces the lists
                    self.times.append(now)
                    self.users.append(user)
                elif stream == "all":
                    seen = broadcasts.get(notification["id"])
                    if seen is None:
                        broadcasts[notification["id"]] = [1, now, now]
                    else:
                        seen[0] += 1
                        seen[2] = max(seen[2], now)
                else:
                    self.foreign.append(f"{user} got {stream}")
        except ConnectionClosed as exc:
            if not self.closing:
                code = str(exc.rcvd.code) if exc.rcvd is not None else "no close frame"
                self.dropped[code] = self.dropped.get(code, 0) + 1
                self.conns.pop(user, None)


def main(pipe: Pipe, url: str, secret: str, concurrency: int) -> None:
    """Process entry point (multiprocessing, spawn)."""
    infra.worker_setup()
    pool = ClientPool(url, secret, concurrency)
    uvloop.run(infra.command_loop(pipe, pool.handle))
