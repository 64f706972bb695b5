"""The Python client of the notifyd protocol: the one implementation, in Python, of the client
loop protocol/README.md §7 recommends. It connects with ?sync=1, authenticates, syncs from its
cursors on every (re)connect (paging on hasMore), drops duplicates by (stream, seq) (each is one
change: a new item, a newer state of one, or a deletion; upsert items by id), retries a
sync refused as `unavailable` or `internal-error`, and reconnects with backoff
(notifyd.core.backoff): at once after 1001 and 4008, never after 4003.

`notifyd tail` is built on it, and so are the tests' fault clients, the chaos run's devices
(which audit what the server sent through an `Observer`'s hooks) and the flood bench's slow
reader. (The benchmark's load generator,
bench/ws_clients.py, keeps its own leaner sans-I/O connections: see its docstring.)

An adapter over websockets' asyncio client; the daemon never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from notifyd.core.backoff import Backoff
from notifyd.core.codes import CloseCode, ErrorCode
from notifyd.core.protocol import streams_of

__all__ = ["Event", "Ledger", "NotifydClient", "Observer", "SyncRequest", "TokenSource"]

TokenSource = str | Callable[[], Awaitable[str]]
# README §8: retry later, with backoff
RETRY_LATER = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL_ERROR})


def _text(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()  # a str goes out as a text frame, bytes as binary


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """What the client yields. kind: notification (new, or from a sync), updated, deleted,
    marked, unread, read, changed, presence, state, reset, error. For `notification` and
    `updated`, data is the notification; for `marked`, the mark; for `state`, {"state": ...}.
    Upsert notifications by id; apply a mark with apply_mark()."""

    kind: str
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class SyncRequest:
    """A sync-request sent: its ref and the cursors it carried."""

    ref: str
    cursors: dict[str, int]


class Observer:
    """Hooks into the client loop for those who audit what the server sent (the fault tests, the
    chaos run). Each runs synchronously when its step happens, before the client acts on what
    was received (so before its ledger drops a duplicate). Every hook does nothing here."""

    def connect_failed(self, exc: BaseException) -> None:
        """A connection attempt failed before the WebSocket opened."""

    def opened(self) -> None:
        """A WebSocket connection opened."""

    def frame(self, frame: dict[str, Any], binary: bool) -> None:
        """Any frame received, before the hooks below."""

    def confirmed(self, streams: frozenset[str]) -> None:
        """connection-confirmed: the streams of this connection."""

    def sync_sent(self, request: SyncRequest) -> None:
        """A notification:sync-request went out."""

    def sync_received(self, request: SyncRequest | None, data: dict[str, Any]) -> None:
        """A notification:sync-response; `request` is the one it answers, None when it answers
        none that was awaited (wrong ref, or none pending)."""

    def live(self, notification: dict[str, Any]) -> None:
        """A notification:new."""

    def error(self, data: dict[str, Any], ref: str | None) -> None:
        """An error frame."""

    def closed(self, code: int | None) -> None:
        """The connection ended; its close code, None when there was no close frame."""


def apply_mark(items: dict[int, dict[str, Any]], mark: dict[str, Any]) -> None:
    """A notification:marked (or a sync-response's mark) applied to a copy of the items kept
    by id: each item of its target stream delivered up to `upto`, of its category (or any),
    is in its state from `at` on, unless it was already (protocol/README.md §6)."""
    state, at = mark["state"], mark["at"]
    for n in items.values():
        if (
            n["stream"] == mark["target"]
            and n["deliveredSeq"] <= mark["upto"]
            and (mark["category"] is None or n["category"] == mark["category"])
            and not n[state]
        ):
            n[state] = True
            n[f"{state}At"] = at


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
    """async for event in NotifydClient("ws://127.0.0.1:8765", token).events(): ...

    Reconnects wait `backoff_base` doubled per failed attempt up to `backoff_cap` (half of it
    random), and up to `quick` seconds after a 1001 or 4008 close; `rand` is the jitter source.
    `sync_limit` is the per-stream page size asked for; `connect_options` go to websockets'
    connect(); `observer` sees every step."""

    def __init__(
        self,
        url: str,
        token: TokenSource,
        cursors: dict[str, int] | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        *,
        quick: float = 1.0,
        rand: Callable[[], float] = random.random,
        sync_limit: int | None = None,
        observer: Observer | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        base = url.rstrip("/").removesuffix("/ws")
        self.url = f"{base}/ws?sync=1"
        self.token = token
        self.ledger = Ledger(cursors)
        self.observer = observer or Observer()
        self.quick, self.sync_limit, self._rand = quick, sync_limit, rand
        self._backoff = Backoff(backoff_base, backoff_cap, rand)  # reconnects
        self._sync_backoff = Backoff(backoff_base, backoff_cap, rand)  # refused syncs
        self._connect_options: dict[str, Any] = {
            "compression": None,
            "open_timeout": 10,
            "max_size": None,
            **(connect_options or {}),
        }
        self.state = "stopped"
        self.unread_count: int | None = None
        self.counts: dict[str, Any] | None = None  # the last notification:unread-count's data
        self.user_id: str | None = None
        self.streams: frozenset[str] = frozenset()  # of the current (or last) connection
        self.synced = False  # a final page (hasMore false) came on this connection
        self.connections = 0  # WebSocket connections opened
        self._ws: ClientConnection | None = None
        self._syncing: SyncRequest | None = None  # the sync-request awaiting its response
        self._retry: asyncio.Task[None] | None = None
        self._refs = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._stopped = False
        self._stop = asyncio.Event()

    @property
    def cursors(self) -> dict[str, int]:
        return dict(self.ledger.cursors)

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def syncing(self) -> bool:
        """A sync-request is awaiting its response."""
        return self._syncing is not None

    async def _token(self) -> str:
        return self.token if isinstance(self.token, str) else await self.token()

    async def events(self) -> AsyncIterator[Event]:
        """Every event, across reconnects, until stop() or a close that forbids reconnecting
        (4003 revoked; 4001 with a fixed token), which ends the iteration after a state event.
        A task reads the connection, so the loop body may await mark_read() and the like."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        failure: list[BaseException] = []

        async def pump() -> None:
            try:
                async for event in self._produce():
                    await queue.put(event)
            except Exception as exc:  # an observer's bug: raised to the consumer below
                failure.append(exc)
            finally:
                await queue.put(None)

        task = asyncio.get_running_loop().create_task(pump())
        try:
            while (event := await queue.get()) is not None:
                yield event
            if failure:
                raise failure[0]
        finally:
            self._stopped = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _produce(self) -> AsyncIterator[Event]:
        while not self._stopped:
            yield self._set_state("connecting")
            code, opened = None, False
            try:
                async with connect(self.url, **self._connect_options) as ws:
                    self._ws, opened = ws, True
                    self.connections += 1
                    self.observer.opened()
                    if self._stopped:  # stop() came while it opened, with nothing to close yet
                        continue  # leaving the block closes it
                    auth = {"type": "auth", "ref": "auth", "data": {"token": await self._token()}}
                    await ws.send(_text(auth))
                    async for event in self._converse(ws):
                        yield event
                    code = ws.close_code
            except InvalidStatus as exc:
                code = exc.response.status_code
                self.observer.connect_failed(exc)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if not opened:
                    self.observer.connect_failed(exc)
            finally:
                self._ws, self._syncing, self.synced = None, None, False
                if self._retry is not None:
                    self._retry.cancel()
                for future in self._pending.values():
                    # an error, not a cancellation: the caller's own task is not cancelled
                    if not future.done():
                        future.set_exception(ConnectionError("the connection closed"))
                self._pending.clear()
            if opened:
                self.observer.closed(code)
            if self._stopped:
                break
            revoked = code == CloseCode.REVOKED
            if revoked or (code in (CloseCode.UNAUTHORIZED, 401) and isinstance(self.token, str)):
                yield self._set_state("revoked" if revoked else "unauthorized")
                return
            yield self._set_state("offline")
            if code in (CloseCode.GOING_AWAY, CloseCode.TOO_SLOW):
                await self._pause(self._rand() * self.quick)  # "at once", spread out
            else:
                await self._pause(self._backoff.next())
        yield self._set_state("stopped")

    async def _pause(self, seconds: float) -> None:
        """Sleep, or less if stop() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    def _set_state(self, state: str) -> Event:
        self.state = state
        return Event("state", {"state": state})

    async def _converse(self, ws: ClientConnection) -> AsyncIterator[Event]:
        async for message in ws:
            frame = orjson.loads(message)
            self.observer.frame(frame, isinstance(message, bytes))
            kind, data, ref = frame["type"], frame.get("data") or {}, frame.get("ref")
            if ref in self._pending:
                future = self._pending.pop(ref)
                if not future.done():
                    future.set_result(frame)
            if kind == "connection-confirmed":
                self.user_id = data["userId"]
                self.streams = frozenset(streams_of(data["userId"], data["roles"]))
                self._backoff.reset()
                self.observer.confirmed(self.streams)
                yield self._set_state("open")
                await self._sync(ws, self._stored_cursors())
            elif kind == "notification:sync-response":
                request, self._syncing = self._syncing, None
                self.observer.sync_received(
                    request if request is not None and request.ref == ref else None, data
                )
                for stream in data["reset"]:
                    self.ledger.drop(stream)
                    yield Event("reset", {"stream": stream})
                # marks, then removed, then the items: `notifications` holds each item's state
                # now, so it goes last (an id in `removed` and in it was given again since)
                for mark in data["marks"]:
                    self.ledger.admit(mark)
                    yield Event("marked", mark)
                for removed in data["removed"]:
                    yield Event("deleted", {"id": removed})
                for n in data["notifications"]:  # new or changed: upsert by id
                    self.ledger.admit(n)
                    yield Event("notification", n)
                self.ledger.advance(data["cursors"])
                if data["hasMore"]:
                    await self._sync(ws, data["cursors"])
                else:
                    self.synced = True
                    self._sync_backoff.reset()
            elif kind in (
                "notification:new",
                "notification:updated",
                "notification:deleted",
                "notification:marked",
            ):
                # every change of a stream, at its place: once each, and the cursor follows.
                # An item's place is its stream and seq, unless the frame names another (a
                # user's own state of a shared item, in the user's stream).
                n = (
                    data
                    if kind in ("notification:deleted", "notification:marked")
                    else data["notification"]
                )
                place = data if "seq" in data else n
                if kind == "notification:new":
                    self.observer.live(n)
                if self.ledger.admit(place):
                    name = kind.removeprefix("notification:")
                    yield Event("notification" if name == "new" else name, n)
                if self.synced:
                    self.ledger.advance({place["stream"]: place["seq"]})
            elif kind == "notification:unread-count":
                self.unread_count = data["count"]
                self.counts = data
                yield Event("unread", data)
            elif kind == "error":
                self.observer.error(data, ref)
                if self._syncing is not None and ref == self._syncing.ref:
                    self._syncing = None  # refused; live delivery goes on
                    if data.get("code") in RETRY_LATER:
                        self._retry_sync(ws)
                yield Event("error", data)
            elif kind == "notification:read":  # the answer to this client's mark-read
                yield Event("read", data)
            elif kind == "notification:changed":  # the answer to its other state changes
                yield Event("changed", data)
            elif kind.startswith("presence:") and kind != "presence:state":
                yield Event("presence", {**data, "online": kind == "presence:online"})

    def _stored_cursors(self) -> dict[str, int]:
        """The stored cursors of this connection's streams (those of other streams are kept)."""
        return {s: c for s, c in self.ledger.cursors.items() if s in self.streams}

    async def _sync(self, ws: ClientConnection, cursors: dict[str, int]) -> None:
        request = SyncRequest(f"sync-{next(self._refs)}", dict(cursors))
        data: dict[str, Any] = {"cursors": cursors}
        if self.sync_limit is not None:
            data["limit"] = self.sync_limit
        self._syncing = request
        self.observer.sync_sent(request)
        await ws.send(
            _text({"type": "notification:sync-request", "data": data, "ref": request.ref})
        )

    def _retry_sync(self, ws: ClientConnection) -> None:
        delay = self._sync_backoff.next()

        async def later() -> None:
            await asyncio.sleep(delay)
            if self._ws is ws and self._syncing is None and not self.synced:
                with contextlib.suppress(ConnectionClosed):
                    await self._sync(ws, self._stored_cursors())

        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().create_task(later())

    async def resync(self) -> bool:
        """Send one more sync-request from the stored cursors, as a reconnect does. Returns
        False, sending nothing, unless connected, synced and no sync under way (then that one,
        or the next connection's, stands for it)."""
        ws = self._ws
        if ws is None or not self.synced or self._syncing is not None:
            return False
        with contextlib.suppress(ConnectionClosed):
            await self._sync(ws, self._stored_cursors())
            return True
        return False

    async def request(self, kind: str, data: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Send one client event and return the server's answer frame (an `error` frame
        included); needs a live connection. Raises ConnectionError when there is none or it
        closes before the answer, TimeoutError when none came in `timeout` seconds."""
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

    async def mark_all_read(self, category: str | None = None) -> dict[str, Any]:
        data = {"category": category} if category is not None else {}
        return await self.request("notification:mark-all-read", data)

    async def change(
        self,
        operation: str,
        ids: list[int] | None = None,
        category: str | None = None,
        until: str | None = None,
    ) -> dict[str, Any]:
        """One of the state operations (mark-seen, mark-read, mark-unread, archive, unarchive,
        snooze) of `ids`, or of all (narrowed to `category`) when ids is None."""
        data: dict[str, Any] = {"ids": ids} if ids is not None else {"all": True}
        if category is not None:
            data["category"] = category
        if until is not None:
            data["until"] = until
        return await self.request(f"notification:{operation}", data)

    async def page(
        self,
        state: str = "all",
        category: str | None = None,
        limit: int = 20,
        next_page: str | None = None,
    ) -> dict[str, Any]:
        """A page of the feed, newest first (notification:page): the answer frame, whose data
        is {notifications, next}; pass `next` back as `next_page` for the following page."""
        data: dict[str, Any] = {"state": state, "limit": limit}
        if category is not None:
            data["category"] = category
        if next_page is not None:
            data["next"] = next_page
        return await self.request("notification:page", data)

    async def act(self, item_id: int, action: str) -> dict[str, Any]:
        """Records that the user took `action` of item `item_id` (notification:act)."""
        return await self.request("notification:act", {"id": item_id, "action": action})

    async def disconnect(self, abrupt: bool = False, reason: str = "") -> bool:
        """End the current connection (the loop then reconnects and syncs): a close handshake,
        or `abrupt`ly, like a network loss, without a close frame. False when not connected."""
        ws = self._ws
        if ws is None:
            return False
        if abrupt:
            ws.transport.abort()
        else:
            with contextlib.suppress(Exception):
                await ws.close(CloseCode.NORMAL_CLOSURE, reason)
        return True

    async def stop(self, reason: str = "") -> None:
        """End the loop: the iteration of events() ends after a `stopped` state event."""
        self._stopped = True
        self._stop.set()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(CloseCode.NORMAL_CLOSURE, reason)
