"""Fan-out decisions: which frame goes to which local connection.

`Publisher` turns NOTIFY events (notifyd.core.events) into server frames, builds each frame
once and writes it to every local subscriber of the event's stream (notifyd.core.index), and
keeps the per-stream last seq published on this node, so that catch-up after a lost LISTEN
connection knows where to start and never publishes an item twice. It publishes what it is
handed, at once and in that order: keeping commit order, fetching the rows sent by reference
and catching up are notifyd.storage.pipeline's, which calls it.

Pure: imports no asyncio, asyncpg, redis or socket; its output is the connections' deliver()
and the callbacks it is given (the metrics' count and latency, what was published, revocations
announced). It reads clocks only to time what it did: a fan-out to many connections is logged
with its write time (the benchmark reads that line), and the commit-to-write latency observed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from notifyd.core.events import (
    Deleted,
    Event,
    New,
    RevocationsChanged,
    UnreadCount,
    Updated,
)
from notifyd.core.index import StreamIndex
from notifyd.core.protocol import encode, websocket_text
from notifyd.core.session import Session

log = logging.getLogger(__name__)
FANOUT_LOG_MIN = 1000  # fan-outs to at least this many connections log their write time
# The unread-count frame follows every new notification of a user; the same count makes the
# same frame, so the small ones (most badges) are built once.
UNREAD_FRAMES_KEPT = 1000


class Recipient(Protocol):
    """A live connection as the publisher sees it (notifyd.edge.server.Connection)."""

    session: Session

    def deliver(self, frame: bytes) -> None:
        """Write the frame uncounted: the publisher counts what it delivers, in bulk."""


R = TypeVar("R", bound=Recipient)


class Publisher(Generic[R]):
    """Publishes events to the local subscribers of their streams, each frame built once."""

    def __init__(self, index: StreamIndex[R]) -> None:
        self.index = index
        self.last_seq: dict[str, int] = {}  # highest seq published here, per stream
        self._floor: dict[str, int] = {}  # a stream's last seq when it got its first subscriber
        self._unread_frames: dict[int, bytes] = {}  # count -> frame, for counts below KEPT
        self.delivered = 0  # notification frames written, for metrics and the bench
        self.published = 0  # notifications that had local recipients
        # Counts the frames and bytes delivered (Metrics.count_sent): once per fan-out, in bulk
        self.count_sent: Callable[[int, int], None] = _uncounted
        # Called with the seconds from the inserting statement (the event's "t") to the frame
        # written to the last local recipient.
        self.observe_latency: Callable[[float], None] | None = None
        # Called with every event published (or dropped as already published)
        self.on_published: Callable[[Event], None] | None = None
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

    # -- publishing ---------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """One event, in commit order; a `pending` one (by reference) must be fetched first."""
        if isinstance(event, New):
            notification = event.notification
            if notification is None:
                return  # deleted before it was fetched: its deletion follows
            stream, seq = event.stream, event.seq
            if event.recheck and seq <= self.last_seq.get(stream, self._floor.get(stream, seq)):
                return  # a replayed notification this node's subscribers had before
            data = {"notification": notification}
            trailer = self.unread_frame(stream, event.unread)
            self._publish(stream, seq, "notification:new", data, trailer, event.committed)
        elif isinstance(event, Updated):
            if event.notification is not None:  # else changed or deleted before it was fetched
                data = {"notification": event.notification}
                trailer = self.unread_frame(event.stream, event.unread)
                self._publish(event.stream, event.seq, "notification:updated", data, trailer)
        elif isinstance(event, Deleted):
            removed = {"id": event.id, "stream": event.stream, "seq": event.seq}
            trailer = self.unread_frame(event.stream, event.unread)
            self._publish(event.stream, event.seq, "notification:deleted", removed, trailer)
        elif isinstance(event, UnreadCount):
            frame = self.unread_frame(event.stream, event.unread)
            if frame is not None:
                self._broadcast(event.stream, frame)
        elif isinstance(event, RevocationsChanged) and self.on_revocations is not None:
            self.on_revocations()
        if self.on_published is not None:
            self.on_published(event)

    def unread_frame(self, stream: str, count: int | None) -> bytes | None:
        """The unread-count frame of a user stream (None for other streams, or no count: an
        event that carries none)."""
        if count is None or not stream.startswith("user:"):
            return None
        count = max(0, count)
        frame = self._unread_frames.get(count)
        if frame is None:
            frame = websocket_text(encode("notification:unread-count", {"count": count}))
            if count < UNREAD_FRAMES_KEPT:
                self._unread_frames[count] = frame
        return frame

    def _broadcast(self, stream: str, frame: bytes) -> None:
        members = list(self.index.subscribers(stream))
        for conn in members:
            conn.deliver(frame)
        self.count_sent(len(members), len(members) * len(frame))

    def _publish(
        self,
        stream: str,
        seq: int,
        kind: str,
        data: dict[str, Any],
        trailer: bytes | None = None,
        committed: float | None = None,
    ) -> None:
        """One change of `stream` at `seq` to every subscriber, in seq order and once each
        (Session.offer): the frame `kind` with `data`. `trailer` (the new unread
        count) goes out in the same write, so a user's device gets one system call."""
        last = self.last_seq.get(stream)
        if last is not None and seq <= last:
            return  # already published (catch-up overlapping live events)
        members = self.index.subscribers(stream)
        if not members:
            return
        self.last_seq[stream] = seq
        frame = websocket_text(encode(kind, data))
        timed = len(members) >= FANOUT_LOG_MIN
        # wall time, and this thread's CPU time: on a busy host the wall figure also holds
        # whatever ran while the loop was preempted
        started, cpu_started = (time.perf_counter(), time.thread_time()) if timed else (0.0, 0.0)
        sent = size = 0
        for conn in list(members):
            out = conn.session.offer(stream, seq, frame)
            if out is not None:
                write = out + trailer if trailer is not None else out
                conn.deliver(write)
                sent += 1
                size += len(write)
            elif trailer is not None:
                conn.deliver(trailer)
                size += len(trailer)
        # frames: the notifications sent, and the trailer every member got (with one or alone)
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
    """The count of a Publisher no one reads the metrics of."""


def stale_claims(events: list[Event]) -> list[Event]:
    """A stale payload's events as claims to check (the payload may be a replay): a new
    notification is fetched by id (so it is what committed) and published only above what
    this node has published or its subscribers read at connect; a revocation makes the
    revocations be read again. Changed items, deletions and counts are dropped: a replay of an
    old one would undo a newer state (a change that is current is in the tables, which catch-up
    after a lost LISTEN and every client's sync read; a count comes again with the next change
    and on every connect)."""
    kept: list[Event] = []
    for event in events:
        if isinstance(event, New):
            kept.append(New(event.stream, event.seq, event.id, None, pending=True, recheck=True))
        elif isinstance(event, RevocationsChanged):  # it only makes the table be read again
            kept.append(event)
    return kept
