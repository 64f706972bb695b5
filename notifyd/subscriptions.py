"""Subscriptions: what each live connection is indexed under (its streams, and the presence
pseudo-stream when its roles make it a watcher), and what a connection reads when it goes live
or gains a stream: each stream's last seq (where catch-up starts should the LISTEN connection be
lost) and the user's unread count, sent unless a newer one went out meanwhile (the unread epoch).

The database only through store.py; no socket: connections are written to through their
`send`, as hub.py hands them over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from notifyd.core.auth import Identity
from notifyd.core.backoff import Backoff
from notifyd.core.errors import StoreError
from notifyd.core.events import Event, New, UnreadCount
from notifyd.core.fanout import Publisher
from notifyd.core.index import StreamIndex
from notifyd.core.presence import PresencePolicy
from notifyd.core.protocol import encode
from notifyd.core.session import State
from notifyd.edge.server import Connection
from notifyd.storage.store import Store

log = logging.getLogger(__name__)

PRESENCE_STREAM = "@presence"  # pseudo-stream of connections that may see presence events
_COUNTED = (New, UnreadCount)  # the events that may carry a new unread count


class Subscriptions:
    """The streams of the live connections of one process."""

    def __init__(
        self,
        store: Store,
        index: StreamIndex[Connection],
        publisher: Publisher[Connection],
        policy: PresencePolicy,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.store = store
        self.index = index
        self.publisher = publisher
        self.policy = policy
        self.spawn = spawn
        # stream -> unread counts published since: a count read before the last one published
        # for the stream is not sent (the live one is newer)
        self._unread_epoch: dict[str, int] = {}

    def add(self, conn: Connection, identity: Identity) -> None:
        """A connection went live: indexed, and its initial state read and sent."""
        self.index.add(conn, self._of(identity))
        self.spawn(self._send_initial_state(conn, identity))

    def remove(self, conn: Connection, identity: Identity) -> None:
        """A live connection closed: out of every stream it was indexed under."""
        gone = self.index.remove(conn, [*identity.streams, PRESENCE_STREAM])
        self._forget(gone)

    def change(self, conn: Connection, before: Identity, after: Identity) -> None:
        """A fresh token changed the connection's roles: the streams of roles it lacks stop at
        once, those of roles it adds start live from now."""
        old, new = self._of(before), self._of(after)
        dropped = [s for s in old if s not in new]
        gained = [s for s in new if s not in old]
        if dropped:
            self._forget(self.index.remove(conn, dropped))
        if gained:
            first = [s for s in self.index.add(conn, gained) if s != PRESENCE_STREAM]
            if first:
                self.spawn(self._note_floors(conn, first))
        if dropped or gained:
            log.info(
                "connection roles changed",
                extra={"conn": conn.session.connection_id, "dropped": dropped, "gained": gained},
            )

    def watchers(self) -> set[Connection] | frozenset[Connection]:
        """The connections that may see presence events."""
        return self.index.subscribers(PRESENCE_STREAM)

    def note_published(self, event: Event) -> None:
        """Every event published (Publisher.on_published): a new unread count moves the
        stream's epoch."""
        if isinstance(event, _COUNTED) and event.unread is not None:
            stream = event.stream
            if stream in self._unread_epoch or self.index.subscribers(stream):
                self._unread_epoch[stream] = self._unread_epoch.get(stream, 0) + 1

    def _of(self, identity: Identity) -> list[str]:
        streams = list(identity.streams)
        if self.policy.is_watcher(identity.roles):
            streams.append(PRESENCE_STREAM)
        return streams

    def _forget(self, gone: list[str]) -> None:
        """Streams left without a local subscriber."""
        self.publisher.forget(gone)
        for stream in gone:
            self._unread_epoch.pop(stream, None)

    async def _note_floors(self, conn: Connection, streams: list[str]) -> None:
        """Streams that just got their first local subscriber: their last seq is where a
        catch-up starts should the LISTEN connection be lost (see _send_initial_state)."""
        backoff = Backoff(0.1, 2.0)
        while conn.session.state is State.LIVE:
            try:
                states = await self.store.stream_states(streams)
            except StoreError as exc:
                delay = backoff.next()
                log.warning("reading stream state failed (retrying in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            for stream in streams:
                if self.index.subscribers(stream):  # not dropped again meanwhile
                    state = states.get(stream)
                    self.publisher.note_floor(stream, state.last_seq if state else 0)
            return

    async def _send_initial_state(self, conn: Connection, identity: Identity) -> None:
        streams = list(identity.streams)
        backoff = Backoff(0.1, 2.0)
        while True:
            epoch = self._unread_epoch.get(identity.user_stream, 0)
            try:
                states = await self.store.stream_states(streams)
                break
            except StoreError as exc:
                # Keep trying while the client is connected: the stream floors read here are
                # where catch-up starts if the LISTEN connection is lost later.
                delay = backoff.next()
                log.warning("reading stream state failed (retrying in %.1fs): %s", delay, exc)
            await asyncio.sleep(delay)
            if conn.session.state is not State.LIVE:
                return
        if conn.session.state is not State.LIVE:
            return
        for stream in streams:
            state = states.get(stream)
            self.publisher.note_floor(stream, state.last_seq if state else 0)
        # A live count that arrived meanwhile is at least as new as what we read.
        if self._unread_epoch.get(identity.user_stream, 0) == epoch:
            state = states.get(identity.user_stream)
            conn.send(encode("notification:unread-count", {"count": state.unread if state else 0}))
