"""Subscriptions: what each live connection is indexed under (its streams, and the presence
pseudo-stream when its roles make it a watcher), and what a connection reads when it goes live
or gains a stream: each stream's last seq (where catch-up starts should the LISTEN connection be
lost) and the user's counts (notifyd.core.counts), read again whenever the publisher says a
user's part may have changed in a way no event carries. The users asked for meanwhile (and in
the next few milliseconds) are read together in one query (a burst of handshakes is a few
queries, not one each), one batch at a time, so each answer for a user is newer than the one
before.

The database only through store.py; no socket: connections are written to through their
`send`, as hub.py hands them over.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from notifyd.core.auth import Identity
from notifyd.core.backoff import Backoff
from notifyd.core.counts import Tallies
from notifyd.core.errors import StoreError
from notifyd.core.fanout import Publisher
from notifyd.core.index import StreamIndex
from notifyd.core.presence import PresencePolicy
from notifyd.core.session import State
from notifyd.edge.server import Connection
from notifyd.storage.store import Store

log = logging.getLogger(__name__)

PRESENCE_STREAM = "@presence"  # pseudo-stream of connections that may see presence events
COUNTS_BATCH = 200  # users whose counts one query reads, at most
# Seconds a batch waits for more users before its query: a query's fixed cost (about as much
# as 15 users' counts) is then shared by the handshakes of those milliseconds of a burst.
COUNTS_GATHER = 0.005


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
        # user streams whose counts are to be read (in order); the task reading them
        self._recounting: dict[str, bool] = {}
        self._counting: asyncio.Task[None] | None = None
        publisher.on_counts_stale = self.recount

    def add(self, conn: Connection, identity: Identity) -> None:
        """A connection went live: indexed, and its initial state read and sent."""
        self.index.add(conn, self._of(identity))
        self._send_initial_state(conn, identity)

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
            self.recount([after.user_stream])
        if dropped or gained:
            log.info(
                "connection roles changed",
                extra={"conn": conn.session.connection_id, "dropped": dropped, "gained": gained},
            )

    def watchers(self) -> set[Connection] | frozenset[Connection]:
        """The connections that may see presence events."""
        return self.index.subscribers(PRESENCE_STREAM)

    def recount(self, users: list[str]) -> None:
        """The counts of these users (their streams) are read again for their connections
        here. The users asked for meanwhile are read together, COUNTS_BATCH at a time in one
        query, one batch at a time (so a user's reads never overlap, and the newest answer is
        the last applied); a user asked for again while read is read once more after."""
        for user in users:
            if self.index.subscribers(user):
                self._recounting[user] = True
        if self._counting is None and self._recounting:
            self._counting = self.spawn(self._count_batches())

    async def _count_batches(self) -> None:
        backoff = Backoff(0.1, 2.0)
        try:
            while self._recounting:
                if len(self._recounting) < COUNTS_BATCH:
                    await asyncio.sleep(COUNTS_GATHER)
                batch = list(itertools.islice(self._recounting, COUNTS_BATCH))
                for user in batch:
                    del self._recounting[user]
                asked = [(user, self._streams_of(user)) for user in batch]
                asked = [(user, streams) for user, streams in asked if streams]
                if not asked:
                    continue
                try:
                    answers = await self._read_counts(asked)
                except StoreError as exc:
                    delay = backoff.next()
                    log.warning("reading counts failed (retrying in %.1fs): %s", delay, exc)
                    for user, _ in asked:
                        self._recounting.setdefault(user, True)
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                for (user, _), rows in zip(asked, answers, strict=True):
                    if rows is not None:
                        self._apply_counts(user, rows)
                    else:  # its own query failed: read again, later
                        self._recounting.setdefault(user, True)
        finally:
            self._counting = None

    async def _read_counts(
        self, asked: list[tuple[str, list[str]]]
    ) -> list[list[tuple[str, int, Tallies]] | None]:
        """The counts of a batch in one query; when that fails, each user's in a query of its
        own, so that one whose counts take too long (many receipts) delays only itself."""
        try:
            return list(await self.store.counts_many(asked))
        except StoreError:
            if len(asked) == 1:
                raise
        answers: list[list[tuple[str, int, Tallies]] | None] = []
        for user, streams in asked:
            try:
                answers.append(await self.store.counts(user, streams))
            except StoreError as exc:
                log.warning("reading the counts of one user failed: %s", exc)
                answers.append(None)
        if all(answer is None for answer in answers):
            raise StoreError("reading counts failed for every user of the batch")
        return answers

    def _streams_of(self, user: str) -> list[str]:
        """Every stream the live connections of `user` here receive."""
        conns = [c for c in self.index.subscribers(user) if c.session.state is State.LIVE]
        return sorted({s for c in conns if c.session.identity for s in c.session.identity.streams})

    def _apply_counts(self, user: str, rows: list[tuple[str, int, Tallies]]) -> None:
        for stream, position, _ in rows:
            if self.index.subscribers(stream):
                self.publisher.note_floor(stream, position)
        for conn in list(self.index.subscribers(user)):
            identity = conn.session.identity
            if conn.session.state is not State.LIVE or identity is None:
                continue
            mine = [row for row in rows if row[0] in identity.streams]
            frame = self.publisher.read_counts(conn.session, mine)
            if frame is not None:
                self.publisher.count_sent(1, len(frame))
                conn.deliver(frame)

    def _of(self, identity: Identity) -> list[str]:
        streams = list(identity.streams)
        if self.policy.is_watcher(identity.roles):
            streams.append(PRESENCE_STREAM)
        return streams

    def _forget(self, gone: list[str]) -> None:
        """Streams left without a local subscriber."""
        self.publisher.forget(gone)

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

    def _send_initial_state(self, conn: Connection, identity: Identity) -> None:
        """The first counts of a connection that went live; the same query gives each stream's
        last seq, where catch-up starts should the LISTEN connection be lost."""
        self.recount([identity.user_stream])
