"""The way from the LISTEN connection to the publisher: events in commit order.

`EventPipeline` takes the typed events of every verified NOTIFY payload (notifyd.core.events,
via notifyd.storage.listener and app.py) and hands them to notifyd.core.fanout.Publisher
strictly in the order they arrived, which is commit order. It owns the asyncio part of fan-out:
an event whose row was sent by reference (too large for a payload) holds back the ones behind
it while one query fetches every such row queued so far; while the LISTEN connection is down
events are queued, and once it is back catch_up() publishes what was committed meanwhile, then
the queue.

Imports no asyncpg: the rows come through injected callables (the store's fetch by id, and
the changes above given seqs, as events).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from notifyd.core.events import Change, Event, New, Updated
from notifyd.core.fanout import Publisher, stale_claims

log = logging.getLogger(__name__)

FETCH_RETRY = 0.5  # seconds before a failed fetch of by-reference rows is tried again
# (stream -> last seq) -> the changes above them, as events; id list -> id -> (seq, wire)
CatchUp = Callable[[dict[str, int]], Awaitable[list[Change]]]
FetchIds = Callable[[list[int]], Awaitable[dict[int, tuple[int, bytes]]]]


class EventPipeline:
    """Events in arrival order to the publisher; one that needs the database (a large row)
    holds back the ones behind it."""

    def __init__(self, publisher: Publisher[Any], fetch_ids: FetchIds, catch_up: CatchUp) -> None:
        self.publisher = publisher
        self._fetch_ids = fetch_ids
        self._catch_up = catch_up
        self._queue: deque[Event] = deque()
        self._draining: asyncio.Task[None] | None = None
        self._blocked = True  # until the first catch_up(): the listener is not up yet

    def put(self, events: list[Event], stale: bool = False) -> None:
        """The events of one verified payload (notifyd.core.channel.Opened), in commit order.
        `stale`: the payload may be a replay; only what the tables confirm is kept."""
        if stale:
            events = stale_claims(events)
        if not self._blocked and self._draining is None and not self._queue:
            # Fast path: nothing ahead of us and nothing to fetch.
            publish = self.publisher.publish
            for i, event in enumerate(events):
                if event.pending:
                    self._queue.extend(events[i:])
                    self._start_drain()
                    return
                publish(event)
            return
        self._queue.extend(events)
        self._start_drain()

    def block(self) -> None:
        """The LISTEN connection is down: queue events until catch_up() has run."""
        self._blocked = True

    def resume(self) -> None:
        """A catch_up() that failed: deliver the events queued meanwhile, as they come."""
        self._blocked = False
        self._start_drain()

    async def catch_up(self) -> int:
        """Called once listening (again): publish what was committed while not listening, for
        every stream with local subscribers, then the events queued meanwhile, in order."""
        self._blocked = True
        while self._draining is not None:
            await asyncio.sleep(0.005)
        missed = await self._catch_up(self.publisher.catch_up_points())
        for event in missed:
            self.publisher.publish(event)
        self._blocked = False
        self._start_drain()
        return len(missed)

    def _start_drain(self) -> None:
        if self._draining is None and not self._blocked and self._queue:
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue and not self._blocked:
                event = self._queue[0]
                if event.pending:
                    await self._fetch_pending()
                    continue
                self._queue.popleft()
                self.publisher.publish(event)
        finally:
            self._draining = None

    async def _fetch_pending(self) -> None:
        """Fetch every by-reference row queued so far in one query, then keep the order."""
        refs = [e.id for e in self._queue if e.pending and isinstance(e, New | Updated)]
        try:
            rows = await self._fetch_ids(refs)
        except Exception:
            log.exception("fetching %d large rows failed; retrying", len(refs))
            await asyncio.sleep(FETCH_RETRY)
            return
        wanted = set(refs)  # references queued during the fetch wait for the next one
        for event in self._queue:
            if event.pending and isinstance(event, New | Updated) and event.id in wanted:
                row = rows.get(event.id)
                # A row deleted or changed again before we fetched it: its deletion or its
                # newer version follows in the queue (a newer state sent at this seq could
                # take a client's cursor past changes still on their way).
                fits = row is not None and row[0] == event.seq
                event.notification = orjson.Fragment(row[1]) if row is not None and fits else None
                event.pending = False
