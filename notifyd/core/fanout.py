# Turns decoded NOTIFY events into frames and writes each frame, built once, to every local
# recipient; keeps the per-stream last seq published on this node, so catch-up after a lost
# LISTEN connection knows where to start and never publishes an item twice.
# Knows nothing of PostgreSQL: large rows and catch-up come through an injected Fetcher.
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from notifyd.core.index import StreamIndex
from notifyd.core.protocol import encode, websocket_text
from notifyd.core.session import Session

log = logging.getLogger(__name__)
FANOUT_LOG_MIN = 1000  # fan-outs to at least this many connections log their write time
# The unread-count frame follows every new notification of a user; the same count makes the
# same frame, so the small ones (most badges) are built once.
UNREAD_FRAMES_KEPT = 1000
_UNREAD_FRAMES: dict[int, bytes] = {}


class Recipient(Protocol):
    """A live connection as the router sees it (server.Connection)."""

    session: Session

    def deliver(self, frame: bytes) -> None:
        """Write the frame, uncounted (the router counts what it delivers, in bulk)."""


# (stream -> last seq) -> rows above them; id list -> rows by id
CatchUp = Callable[[dict[str, int]], Awaitable[list[tuple[str, int, bytes]]]]
FetchIds = Callable[[list[int]], Awaitable[dict[int, bytes]]]


class Router:
    """Routes events to connections. Events are processed strictly in arrival order (commit
    order); an event that needs the database (a large row) holds back the ones behind it."""

    def __init__(self, index: StreamIndex[Any], fetch_ids: FetchIds, catch_up: CatchUp) -> None:
        self.index = index
        self.last_seq: dict[str, int] = {}  # highest seq published here, per stream
        self._floor: dict[str, int] = {}  # a stream's last seq when it got its first subscriber
        self._fetch_ids = fetch_ids
        self._catch_up = catch_up
        self._queue: deque[dict[str, Any]] = deque()
        self._draining: asyncio.Task[None] | None = None
        self._blocked = True  # until the first catch_up(): the listener is not up yet
        self.delivered = 0  # notification frames written, for metrics and the bench
        self.published = 0  # notifications that had local recipients
        # Counts the frames and bytes delivered (Metrics.count_sent): once per fan-out, in bulk
        self.count_sent: Callable[[int, int], None] = _uncounted
        # Called with the seconds from the inserting statement (the event's "t") to the frame
        # written to the last local recipient.
        self.observe_latency: Callable[[float], None] | None = None
        self.on_published: Callable[[str, dict[str, Any]], None] | None = None
        # A revocation was announced (fresh or stale): the table says who is revoked
        self.on_revocations: Callable[[], None] | None = None

    # -- subscriptions -------------------------------------------------------------------

    def note_floor(self, stream: str, last_seq: int) -> None:
        """A new subscriber read the stream's last seq: where catch-up starts for a stream
        that has published nothing yet. Live items are never dropped because of it."""
        self._floor.setdefault(stream, last_seq)

    def forget(self, streams: list[str]) -> None:
        for stream in streams:
            self.last_seq.pop(stream, None)
            self._floor.pop(stream, None)

    def catch_up_points(self) -> dict[str, int]:
        """stream -> last seq delivered here, for every stream with local subscribers."""
        points = dict(self._floor)
        points.update(self.last_seq)
        return points

    # -- events from the listener -------------------------------------------------------

    def feed(self, events: list[dict[str, Any]], stale: bool = False) -> None:
        """The events of one verified NOTIFY payload (channel.Channel.open), in commit order.
        `stale`: the payload may be a replay; only what the tables confirm is kept."""
        if stale:
            events = self._recheck(events)
        if not self._blocked and self._draining is None and not self._queue:
            # Fast path: nothing ahead of us and nothing to fetch.
            for i, event in enumerate(events):
                if _by_reference(event):
                    self._queue.extend(events[i:])
                    self._start_drain()
                    return
                self._dispatch(event)
            return
        self._queue.extend(events)
        self._start_drain()

    def _recheck(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A stale payload's events as claims to check: a new notification is fetched by id
        (so it is what committed) and published only above what this node has published or
        its subscribers read at connect; a revocation makes the revocations be read again.
        Read marks, unread items, deletions and counts are dropped: a replay of an old one
        would undo a newer state (a count or read mark that is current comes again with the
        next change, and on every connect and sync)."""
        kept: list[dict[str, Any]] = []
        for event in events:
            kind = event.get("k")
            if kind == "n":
                wire = event.get("n")
                ref = (
                    {"id": wire["id"], "s": wire["stream"], "q": wire["seq"]}
                    if isinstance(wire, dict)
                    else {"id": event["id"], "s": event["s"], "q": event["q"]}
                )
                kept.append({"k": "n", **ref, "recheck": True})
            elif kind == "x":  # it only makes the table be read again
                kept.append(event)
        return kept

    def block(self) -> None:
        """The LISTEN connection is down: queue events until catch_up() has run."""
        self._blocked = True

    def resume(self) -> None:
        """A catch_up() that failed: deliver the events queued meanwhile, as they come."""
        self._blocked = False
        self._start_drain()

    def _start_drain(self) -> None:
        if self._draining is None and not self._blocked and self._queue:
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue and not self._blocked:
                event = self._queue[0]
                if _by_reference(event):
                    await self._resolve_large()
                    continue
                self._queue.popleft()
                self._dispatch(event)
        finally:
            self._draining = None

    async def _resolve_large(self) -> None:
        """Fetch every by-reference row queued so far in one query, then keep the order."""
        refs = [e["id"] for e in self._queue if _by_reference(e)]
        try:
            rows = await self._fetch_ids(refs)
        except Exception:
            log.exception("fetching %d large rows failed; retrying", len(refs))
            await asyncio.sleep(0.5)
            return
        wanted = set(refs)  # references queued during the fetch wait for the next one
        for event in self._queue:
            if _by_reference(event) and event["id"] in wanted:
                wire = rows.get(event["id"])
                # A row deleted before we fetched it: its deletion event follows in the queue.
                event["n"] = orjson.Fragment(wire) if wire is not None else None

    async def catch_up(self) -> int:
        """Called once listening (again): publish what was committed while not listening, for
        every stream with local subscribers, then the events queued meanwhile, in order."""
        self._blocked = True
        while self._draining is not None:
            await asyncio.sleep(0.005)
        rows = await self._catch_up(self.catch_up_points())
        for stream, seq, wire in rows:
            self._publish_new(stream, seq, orjson.Fragment(wire))
        self._blocked = False
        self._start_drain()
        return len(rows)

    # -- publishing ---------------------------------------------------------------------

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("k")
        if kind == "n":
            notification = event["n"]
            if notification is None:
                return
            if isinstance(notification, orjson.Fragment):
                stream, seq = event["s"], event["q"]
            else:
                stream, seq = notification["stream"], notification["seq"]
            if "recheck" in event and seq <= self.last_seq.get(
                stream, self._floor.get(stream, seq)
            ):
                return  # a replayed notification this node's subscribers had before
            self._publish_new(
                stream, seq, notification, self._unread_frame(stream, event), event.get("t")
            )
        elif kind == "m":
            notification = event["n"]
            if notification is not None:  # else deleted before it was fetched
                stream = event["s"] if "s" in event else notification["stream"]
                self._broadcast(
                    stream,
                    websocket_text(encode("notification:updated", {"notification": notification})),
                )
        elif kind == "r":
            stream = event["s"]
            frame = websocket_text(
                encode("notification:read", {"ids": event["ids"], "readAt": event["at"]})
            )
            origin = event.get("o")
            sent = 0
            for conn in list(self.index.subscribers(stream)):
                if conn.session.connection_id != origin:
                    conn.deliver(frame)
                    sent += 1
            self.count_sent(sent, sent * len(frame))
        elif kind == "d":
            frame = websocket_text(
                encode("notification:deleted", {"id": event["id"], "stream": event["s"]})
            )
            self._broadcast(event["s"], frame)
        elif kind == "c":
            self._unread(event["s"], event)
        elif kind == "x":
            if self.on_revocations is not None:
                self.on_revocations()
        else:
            log.error("unknown NOTIFY event kind %r dropped", kind)
        if self.on_published is not None:
            self.on_published(str(kind), event)

    @staticmethod
    def _unread_frame(stream: str, event: dict[str, Any]) -> bytes | None:
        if not stream.startswith("user:") or "u" not in event:
            return None
        count = max(0, event["u"])
        frame = _UNREAD_FRAMES.get(count)
        if frame is None:
            frame = websocket_text(encode("notification:unread-count", {"count": count}))
            if count < UNREAD_FRAMES_KEPT:
                _UNREAD_FRAMES[count] = frame
        return frame

    def _unread(self, stream: str, event: dict[str, Any]) -> None:
        frame = self._unread_frame(stream, event)
        if frame is not None:
            self._broadcast(stream, frame)

    def _broadcast(self, stream: str, frame: bytes) -> None:
        members = list(self.index.subscribers(stream))
        for conn in members:
            conn.deliver(frame)
        self.count_sent(len(members), len(members) * len(frame))

    def _publish_new(
        self,
        stream: str,
        seq: int,
        notification: Any,
        trailer: bytes | None = None,
        committed: float | None = None,
    ) -> None:
        """One notification:new to every subscriber of `stream`; `trailer` (the new unread
        count) goes out in the same write, so a user's device gets one system call."""
        last = self.last_seq.get(stream)
        if last is not None and seq <= last:
            return  # already published (catch-up overlapping live events)
        members = self.index.subscribers(stream)
        if not members:
            return
        self.last_seq[stream] = seq
        frame = websocket_text(encode("notification:new", {"notification": notification}))
        timed = len(members) >= FANOUT_LOG_MIN
        # wall time, and this thread's CPU time: on a busy host the wall figure also holds
        # whatever ran while the loop was preempted
        started, cpu_started = (time.perf_counter(), time.thread_time()) if timed else (0.0, 0.0)
        sent = size = 0
        for conn in list(members):
            out = conn.session.offer(stream, seq, frame)
            if out is not None:
                data = out + trailer if trailer is not None else out
                conn.deliver(data)
                sent += 1
                size += len(data)
            elif trailer is not None:
                conn.deliver(trailer)
                size += len(trailer)
        # offer() may release held frames with this one: frames counts the notifications
        self.count_sent(sent + (len(members) if trailer is not None else 0), size)
        self.delivered += sent
        self.published += 1
        if committed is not None and self.observe_latency is not None:
            self.observe_latency(max(0.0, time.time() - committed))
        if timed:
            log.info(
                "fan-out to %d connections took %.3f ms, %.3f ms CPU (%s seq %d)",
                len(members),
                (time.perf_counter() - started) * 1000,
                (time.thread_time() - cpu_started) * 1000,
                stream,
                seq,
            )


def _uncounted(frames: int, size: int) -> None:
    """The count of a Router no one reads the metrics of."""


def _by_reference(event: dict[str, Any]) -> bool:
    """A new or changed notification sent by id (too large for a payload): fetched first."""
    return "n" not in event and event.get("k") in ("n", "m")
