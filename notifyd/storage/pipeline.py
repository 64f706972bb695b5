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
# (user stream, id) of receipts -> (the receipt's seq, wire)
FetchReceipts = Callable[
    [list[tuple[str, int]]], Awaitable[dict[tuple[str, int], tuple[int, bytes]]]
]
# (id, user streams) of shared items -> id -> (seq, user stream -> wire)
FetchViews = Callable[
    [list[tuple[int, list[str]]]], Awaitable[dict[int, tuple[int, dict[str, bytes]]]]
]


class EventPipeline:
    """Events in arrival order to the publisher; one that needs the database (a large row)
    holds back the ones behind it."""

    def __init__(
        self,
        publisher: Publisher[Any],
        fetch_ids: FetchIds,
        catch_up: CatchUp,
        fetch_receipts: FetchReceipts,
        fetch_views: FetchViews,
    ) -> None:
        self.publisher = publisher
        self._fetch_ids = fetch_ids
        self._catch_up = catch_up
        self._fetch_receipts = fetch_receipts
        self._fetch_views = fetch_views
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
        # ahead of what was queued meanwhile; changes that need rows fetched are fetched first
        self._queue.extendleft(reversed(missed))
        self._blocked = False
        self._start_drain()
        if missed:
            self.publisher.counts_stale_everywhere()  # catch-up reads carry no counts
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
        """Fetch what every pending event queued so far needs, one query per kind, then keep
        the order: rows too large for a payload, users' receipts of shared items too large
        for one, and shared items' edits as each of their users here sees them."""
        pending = [e for e in self._queue if e.pending and isinstance(e, New | Updated)]
        rows_of = [e.id for e in pending if not (isinstance(e, Updated) and (e.viewer or e.shared))]
        receipts_of = [
            (e.viewer, e.id) for e in pending if isinstance(e, Updated) and e.viewer is not None
        ]
        views_of = [
            (e.id, self.publisher.viewers(e.stream))
            for e in pending
            if isinstance(e, Updated) and e.shared
        ]
        try:
            rows = await self._fetch_ids(rows_of) if rows_of else {}
            receipts = await self._fetch_receipts(receipts_of) if receipts_of else {}
            views = await self._fetch_views(views_of) if views_of else {}
        except Exception:
            log.exception("fetching %d pending changes failed; retrying", len(pending))
            await asyncio.sleep(FETCH_RETRY)
            return
        # A row deleted or changed again before we fetched it: its deletion or its newer
        # version follows in the queue (a newer state sent at this seq could take a client's
        # cursor past changes still on their way). Events queued during the fetch wait for the
        # next one.
        for event in pending:
            if isinstance(event, Updated) and event.viewer is not None:
                got = receipts.get((event.viewer, event.id))
                event.notification = (
                    orjson.Fragment(got[1]) if got and got[0] == event.seq else None
                )
            elif isinstance(event, Updated) and event.shared:
                seen = views.get(event.id)
                if seen is not None and seen[0] == event.seq:
                    event.views = {v: orjson.Fragment(w) for v, w in seen[1].items()}
                else:
                    event.views, event.notification = None, None
            else:
                row = rows.get(event.id)
                fits = row is not None and row[0] == event.seq
                event.notification = orjson.Fragment(row[1]) if row is not None and fits else None
            event.pending = False
