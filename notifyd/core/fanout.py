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

from notifyd.core.counts import Counts, Recent, Successors, Tallies, rows_of
from notifyd.core.events import (
    Deleted,
    Event,
    Marked,
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
        self.recent = Recent()  # the new items published on shared streams, for late counts
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
        # The counts of these users (user streams) must be read again (read_counts() then)
        self.on_counts_stale: Callable[[list[str]], None] | None = None

    # -- subscriptions -------------------------------------------------------------------

    def note_floor(self, stream: str, last_seq: int) -> None:
        """A new subscriber read the stream's last seq: where catch-up starts for a stream
        that has published nothing yet. Live items are never dropped because of it."""
        self._floor.setdefault(stream, last_seq)

    def forget(self, streams: list[str]) -> None:
        for stream in streams:
            self.last_seq.pop(stream, None)
            self._floor.pop(stream, None)
            self.recent.forget(stream)

    def catch_up_points(self) -> dict[str, int]:
        """stream -> last seq delivered here, for every stream with local subscribers."""
        points = dict(self._floor)
        points.update(self.last_seq)
        return points

    # -- publishing ---------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """One event, in commit order; a `pending` one (by reference, or a shared item's edit
        awaiting its users' views) must be fetched first."""
        if isinstance(event, New):
            notification = event.notification
            if notification is None:
                return  # deleted before it was fetched: its deletion follows
            stream, seq = event.stream, event.seq
            if event.recheck and seq <= self.last_seq.get(stream, self._floor.get(stream, seq)):
                return  # a replayed notification this node's subscribers had before
            if stream.startswith("user:"):
                count = self._announcer(stream, seq, event.tallies)
            else:
                if self.index.subscribers(stream):
                    self.recent.add(stream, seq, event.category)
                count = self._adder(stream, seq, event.category)
            data = {"notification": notification}
            self._publish(stream, seq, "notification:new", data, count, event.committed)
        elif isinstance(event, Updated):
            self._publish_update(event)
        elif isinstance(event, Deleted):
            removed = {"id": event.id, "stream": event.stream, "seq": event.seq}
            if event.stream.startswith("user:"):
                count = self._announcer(event.stream, event.seq, event.tallies)
            else:
                count = None
                self._shared_changed(event.stream, event.seq)
            self._publish(event.stream, event.seq, "notification:deleted", removed, count)
        elif isinstance(event, Marked):
            mark: dict[str, Any] = {
                "stream": event.stream,
                "seq": event.seq,
                "state": event.state,
                "category": event.category,
                "target": event.target,
                "upto": event.upto,
                "at": event.at,
            }
            count = self._announcer(event.stream, event.seq, event.tallies)
            frame = websocket_text(encode("notification:marked", mark))
            self._publish(
                event.stream,
                event.seq,
                "notification:marked",
                None,
                count,
                frame_of=self._receiving(event.target, frame),
            )
            if event.target != event.stream and self.on_counts_stale is not None:
                self.on_counts_stale([event.stream])
        elif isinstance(event, UnreadCount):
            if not event.stream.startswith("user:"):
                self._shared_changed(event.stream, event.seq)
            announce = self._announcer(event.stream, event.seq, event.tallies)
            if announce is not None:
                sent = size = 0
                for conn in list(self.index.subscribers(event.stream)):
                    counts = announce(conn.session)
                    if counts is not None:
                        conn.deliver(counts)
                        sent += 1
                        size += len(counts)
                self.count_sent(sent, size)
        elif isinstance(event, RevocationsChanged) and self.on_revocations is not None:
            self.on_revocations()
        if self.on_published is not None:
            self.on_published(event)

    def _publish_update(self, event: Updated) -> None:
        stream, seq = event.stream, event.seq
        if event.viewer is not None:  # a user's receipt of a shared item: their own view
            if event.notification is None:
                return  # changed again before it was fetched: the later event brings it
            data = {"notification": event.notification, "stream": stream, "seq": seq}
            frame = websocket_text(encode("notification:updated", data))
            receives = self._receiving(event.item_stream or "", frame)
            self._publish(stream, seq, "notification:updated", None, frame_of=receives)
            if self.on_counts_stale is not None:
                self.on_counts_stale([stream])
        elif event.views is not None:  # a shared item's edit, as each of its users sees it
            views = event.views
            fallback = event.notification
            built: dict[str, bytes] = {}

            def frame_of(session: Session) -> bytes | None:
                identity = session.identity
                viewer = identity.user_stream if identity is not None else ""
                frame = built.get(viewer)
                if frame is None:
                    wire = views.get(viewer, fallback)
                    if wire is None:
                        return None
                    frame = websocket_text(encode("notification:updated", {"notification": wire}))
                    built[viewer] = frame
                return frame

            self._publish(stream, seq, "notification:updated", None, frame_of=frame_of)
            self._shared_changed(stream, seq)
        elif event.notification is not None:  # else changed or deleted before it was fetched
            data = {"notification": event.notification}
            count = self._announcer(stream, seq, event.tallies)
            self._publish(stream, seq, "notification:updated", data, count)

    @staticmethod
    def _receiving(target: str, frame: bytes) -> Callable[[Session], bytes | None]:
        """`frame` for a connection whose token receives `target`, else nothing: a user's
        change of a stream (a receipt, a mark) goes only to the devices that receive it
        (another device of the user may hold a token with other roles, and a mark names its
        stream). Their cursors pass over its place, as over any seq they were not sent."""

        def receives(session: Session) -> bytes | None:
            identity = session.identity
            return frame if identity is not None and target in identity.streams else None

        return receives

    # -- counts ---------------------------------------------------------------------------

    def _announcer(
        self, stream: str, seq: int, tallies: Tallies | None
    ) -> Callable[[Session], bytes | None] | None:
        """The count frame of each subscriber of a user stream whose tallies an event carries
        (None when it carries none)."""
        if tallies is None:
            return None
        rows = rows_of(tallies)

        def announce(session: Session) -> bytes | None:
            if session.identity is None:
                return None
            # (made here when its first read is still running: it may answer from before)
            _counts_of(session).announce(stream, seq, rows)
            return self.count_frame(session)

        return announce

    def _adder(self, stream: str, seq: int, category: str) -> Callable[[Session], bytes | None]:
        """One more unread and unseen item of a shared stream, for each subscriber."""
        made: Successors = {}

        def add(session: Session) -> bytes | None:
            counts = session.counts  # (this runs for every connection of a broadcast)
            return None if counts is None else counts.added_frame(stream, seq, category, made)

        return add

    def _shared_changed(self, stream: str, seq: int) -> None:
        """A shared item changed or went: each subscriber's part of that stream is read again."""
        self.recent.changed(stream, seq)
        if self.on_counts_stale is not None:
            users = self.viewers(stream)
            if users:
                self.on_counts_stale(users)

    def viewers(self, stream: str) -> list[str]:
        """The user streams of the connections subscribed to `stream`."""
        return sorted(
            {
                conn.session.identity.user_stream
                for conn in self.index.subscribers(stream)
                if conn.session.identity is not None
            }
        )

    def counts_stale_everywhere(self) -> None:
        """Every connection's counts are read again (after a catch-up, whose reads carry
        none)."""
        if self.on_counts_stale is not None:
            users = [s for s in self.index.streams() if s.startswith("user:")]
            if users:
                self.on_counts_stale(users)

    def count_frame(self, session: Session) -> bytes | None:
        """The notification:unread-count frame of a connection's counts (Counts.frame())."""
        counts = session.counts
        return None if counts is None else counts.frame()

    def read_counts(self, session: Session, rows: list[tuple[str, int, Tallies]]) -> bytes | None:
        """A counts query's parts for a connection: (stream, position, tallies) per stream.
        A shared part is brought up to date with the new items published here after its
        position; returns the count frame to send, or None (not all known, or a part must be
        read again: `on_counts_stale` was called)."""
        identity = session.identity
        if identity is None:
            return None
        counts = _counts_of(session)
        own = identity.user_stream
        stale = False
        for stream, position, tallies in rows:
            if stream == own:
                counts.read(stream, position, tallies, own=True)
                continue
            later = self.recent.since(stream, position)
            if later is None:
                stale = True
                continue
            tallies = dict(tallies)
            for seq, category in later:
                unread, unseen = tallies.get(category, (0, 0))
                tallies[category] = (unread + 1, unseen + 1)
                position = seq
            counts.read(stream, position, tallies, own=False)
        counts.complete = counts.known(identity.streams)
        if stale and self.on_counts_stale is not None:
            self.on_counts_stale([own])
        return self.count_frame(session)

    def _publish(
        self,
        stream: str,
        seq: int,
        kind: str,
        data: dict[str, Any] | None,
        count: Callable[[Session], bytes | None] | None = None,
        committed: float | None = None,
        frame_of: Callable[[Session], bytes | None] | None = None,
    ) -> None:
        """One change of `stream` at `seq` to every subscriber, in seq order and once each
        (Session.offer): the frame `kind` with `data` (or each connection's own, `frame_of`).
        `count` gives each connection's new count frame, if any, which goes out in the same
        write, so a user's device gets one system call."""
        last = self.last_seq.get(stream)
        if last is not None and seq <= last:
            return  # already published (catch-up overlapping live events)
        members = self.index.subscribers(stream)
        if not members:
            return
        self.last_seq[stream] = seq
        shared_frame = websocket_text(encode(kind, data)) if data is not None else b""
        timed = len(members) >= FANOUT_LOG_MIN
        # wall time, and this thread's CPU time: on a busy host the wall figure also holds
        # whatever ran while the loop was preempted
        started, cpu_started = (time.perf_counter(), time.thread_time()) if timed else (0.0, 0.0)
        sent = frames = size = 0
        # the shared frame and a count frame, joined once per distinct count frame: a
        # broadcast's connections mostly share a few (keyed by identity; each entry holds its
        # count frame, so no other object takes its id meanwhile)
        joined: dict[int, tuple[bytes, bytes]] = {}
        for conn in list(members):
            session = conn.session
            frame = shared_frame if frame_of is None else frame_of(session)
            out = session.offer(stream, seq, frame) if frame is not None else None
            trailer = count(session) if count is not None else None
            if out is not None:
                if trailer is None:
                    write = out
                elif out is shared_frame:
                    pair = joined.get(id(trailer))
                    if pair is None:
                        pair = joined[id(trailer)] = (trailer, out + trailer)
                    write = pair[1]
                else:
                    write = out + trailer
                conn.deliver(write)
                sent += 1
                frames += 1 if trailer is None else 2
                size += len(write)
            elif trailer is not None:
                conn.deliver(trailer)
                frames += 1
                size += len(trailer)
        self.count_sent(frames, size)
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


def _counts_of(session: Session) -> Counts:
    """A connection's counts, made empty on first use."""
    if session.counts is None:
        session.counts = Counts()
    return session.counts


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
