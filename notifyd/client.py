# An asyncio client of the notifyd protocol for Python programs, tools and tests: it connects
# with ?sync=1, authenticates, syncs from its cursors on every (re)connect (paging on hasMore),
# drops duplicates by (stream, seq), and reconnects with exponential backoff and jitter, as
# protocol/README.md §7 recommends. `notifyd tail` is built on it.
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from notifyd.core.protocol import streams_of

TokenSource = str | Callable[[], Awaitable[str]]


def backoff_delay(
    attempt: int, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before reconnect attempt `attempt` (0, 1, ...): doubling up to `cap`, half of it
    random so that many clients spread out."""
    ceiling: float = min(cap, base * 2.0 ** min(attempt, 30))
    return ceiling / 2 + rand() * ceiling / 2


def _text(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()  # a str goes out as a text frame, bytes as binary


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """What the client yields. kind: notification, read, deleted, unread, presence, state,
    reset, error. For `notification`, data is the notification; for `state`, {"state": ...}."""

    kind: str
    data: dict[str, Any]


class Ledger:
    """Per-stream cursors and the (stream, seq) pairs seen recently: the dedupe, sans I/O."""

    def __init__(self, cursors: dict[str, int] | None = None, remember: int = 10_000) -> None:
        self.cursors: dict[str, int] = dict(cursors or {})
        self._seen: dict[tuple[str, int], None] = {}
        self._remember = remember

    def admit(self, n: dict[str, Any]) -> bool:
        key = (n["stream"], n["seq"])
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._remember:
            del self._seen[next(iter(self._seen))]
        return True

    def advance(self, cursors: dict[str, int]) -> None:
        for stream, seq in cursors.items():
            if seq >= self.cursors.get(stream, 0):
                self.cursors[stream] = seq

    def drop(self, stream: str) -> None:
        self.cursors.pop(stream, None)
        self._seen = {k: None for k in self._seen if k[0] != stream}


class NotifydClient:
    """async for event in NotifydClient("ws://127.0.0.1:8765", token).events(): ..."""

    def __init__(
        self,
        url: str,
        token: TokenSource,
        cursors: dict[str, int] | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        base = url.rstrip("/").removesuffix("/ws")
        self.url = f"{base}/ws?sync=1"
        self.token = token
        self.ledger = Ledger(cursors)
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.state = "stopped"
        self.unread_count: int | None = None
        self.user_id: str | None = None
        self._ws: ClientConnection | None = None
        self._refs = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._stopped = False

    @property
    def cursors(self) -> dict[str, int]:
        return dict(self.ledger.cursors)

    async def _token(self) -> str:
        return self.token if isinstance(self.token, str) else await self.token()

    async def events(self) -> AsyncIterator[Event]:
        """Every event, across reconnects, until stop() or a close that forbids reconnecting
        (4003 revoked; 4001 with a fixed token), which ends the iteration after a state event.
        A task reads the connection, so the loop body may await mark_read() and the like."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in self._produce():
                    await queue.put(event)
            finally:
                await queue.put(None)

        task = asyncio.get_running_loop().create_task(pump())
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._stopped = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _produce(self) -> AsyncIterator[Event]:
        attempt = 0
        while not self._stopped:
            yield self._set_state("connecting")
            code = None
            try:
                async with connect(
                    self.url, compression=None, open_timeout=10, max_size=None
                ) as ws:
                    self._ws = ws
                    await ws.send(
                        _text(
                            {"type": "auth", "ref": "auth", "data": {"token": await self._token()}}
                        )
                    )
                    async for event in self._converse(ws):
                        attempt = 0
                        yield event
                    code = ws.close_code
            except InvalidStatus as exc:
                code = exc.response.status_code
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            except (OSError, InvalidHandshake, TimeoutError):
                code = None
            finally:
                self._ws = None
                for future in self._pending.values():
                    future.cancel()
                self._pending.clear()
            if self._stopped:
                break
            if code == 4003 or (code in (4001, 401) and isinstance(self.token, str)):
                yield self._set_state("revoked" if code == 4003 else "unauthorized")
                return
            yield self._set_state("offline")
            if code in (1001, 4008):
                await asyncio.sleep(random.random())  # "at once", spread out
            else:
                await asyncio.sleep(backoff_delay(attempt, self.backoff_base, self.backoff_cap))
                attempt += 1
        yield self._set_state("stopped")

    def _set_state(self, state: str) -> Event:
        self.state = state
        return Event("state", {"state": state})

    async def _converse(self, ws: ClientConnection) -> AsyncIterator[Event]:
        synced = False
        async for message in ws:
            frame = orjson.loads(message)
            kind, data, ref = frame["type"], frame.get("data") or {}, frame.get("ref")
            if ref in self._pending:
                future = self._pending.pop(ref)
                if not future.done():
                    future.set_result(frame)
            if kind == "connection-confirmed":
                self.user_id = data["userId"]
                mine = set(streams_of(data["userId"], data["roles"]))
                yield self._set_state("open")
                await self._sync(ws, {s: c for s, c in self.ledger.cursors.items() if s in mine})
            elif kind == "notification:sync-response":
                for stream in data["reset"]:
                    self.ledger.drop(stream)
                    yield Event("reset", {"stream": stream})
                for n in data["notifications"]:
                    if self.ledger.admit(n):
                        yield Event("notification", n)
                self.ledger.advance(data["cursors"])
                if data["hasMore"]:
                    await self._sync(ws, data["cursors"])
                else:
                    synced = True
            elif kind == "notification:new":
                n = data["notification"]
                if self.ledger.admit(n):
                    yield Event("notification", n)
                if synced:
                    self.ledger.advance({n["stream"]: n["seq"]})
            elif kind == "notification:unread-count":
                self.unread_count = data["count"]
                yield Event("unread", data)
            elif kind in (
                "notification:read",
                "notification:updated",
                "notification:deleted",
                "error",
            ):
                yield Event(kind.removeprefix("notification:"), data)
            elif kind.startswith("presence:") and kind != "presence:state":
                yield Event("presence", {**data, "online": kind == "presence:online"})

    async def _sync(self, ws: ClientConnection, cursors: dict[str, int]) -> None:
        ref = f"sync-{next(self._refs)}"
        await ws.send(
            _text({"type": "notification:sync-request", "data": {"cursors": cursors}, "ref": ref})
        )

    async def request(self, kind: str, data: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Send one client event and return the server's answer frame (an `error` frame
        included); needs a live connection."""
        ws = self._ws
        if ws is None or self.state != "open":
            raise ConnectionError("not connected")
        ref = f"{kind}-{next(self._refs)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        await ws.send(_text({"type": kind, "data": data, "ref": ref}))
        return await asyncio.wait_for(future, timeout)

    async def mark_read(self, ids: list[int]) -> dict[str, Any]:
        return await self.request("notification:mark-read", {"ids": ids})

    async def mark_all_read(self) -> dict[str, Any]:
        return await self.request("notification:mark-all-read", {})

    async def stop(self) -> None:
        self._stopped = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
