"""Per-connection protocol state, pure: awaiting auth -> live -> closed, the identity, and the
replay bookkeeping that keeps the protocol's ordering guarantee (protocol/README.md §6, Sync):
while a sync-request runs, live items of its streams are held; after the response, only those
above the cursor go out.

Imports no asyncio, asyncpg, redis or socket, and of notifyd only notifyd.core.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

from notifyd.core.auth import Identity
from notifyd.core.codes import ErrorCode
from notifyd.core.counts import Counts
from notifyd.core.errors import ClientError


class State(enum.Enum):
    AWAITING_AUTH = "awaiting-auth"
    LIVE = "live"
    CLOSED = "closed"


class Session:
    """What the server knows of one connection; the server adapter does the I/O."""

    __slots__ = (
        "_behind",
        "_cursors",
        "_held",
        "_live_from",
        "_waiting",
        "connection_id",
        "counts",
        "identity",
        "operations",
        "state",
    )

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.state = State.AWAITING_AUTH
        self.identity: Identity | None = None
        # what its notification:unread-count frames say, once read at connect (core.counts)
        self.counts: Counts | None = None
        # client operations (a page, a state change...) waiting for the database (hub.py)
        self.operations = 0
        # stream -> last seq this connection has been given, live or by a sync (dedupes live
        # items); made on the first item sent
        self._cursors: dict[str, int] | None = None
        # stream -> first seq sent live since the last sync (or connect). Live items of a
        # stream come without gaps, so [_live_from, _cursors] is exactly what may still be on
        # its way to a client that sends a sync-request now: a cursor for that stream never
        # gets it again (a stream asked without one gets it as it is now).
        self._live_from: dict[str, int] | None = None
        # stream -> [(seq, frame)] held while a sync for that stream runs
        self._held: dict[str, list[tuple[int, bytes]]] | None = None
        # streams whose sync answered hasMore: live items wait for the next sync-request
        self._behind: set[str] | None = None
        # the client connected with ?sync=1: nothing goes out live until its first sync-request
        # (which covers every stream), so a reconnect replays in seq order
        self._waiting = False

    def authenticate(self, identity: Identity) -> Identity:
        """First authentication, or a fresh token on a live connection: then only for the same
        user, and it replaces the current one whole: expiry and roles. The streams of roles it
        lacks are forgotten here (the caller unsubscribes the connection from them); those of
        roles it adds start from the next live item. The roles cannot change while a sync is
        answered: that sync covers the streams it began with."""
        current = self.identity
        if current is not None:
            if identity.user_id != current.user_id:
                raise ClientError(ErrorCode.AUTH_USER_MISMATCH)
            before, after = set(current.streams), set(identity.streams)
            if self._held is not None and before != after:
                raise ClientError(
                    ErrorCode.SYNC_IN_PROGRESS,
                    "this token changes the connection's "
                    "roles: send it again once the sync-response has come",
                )
            for stream in before - after:
                self._forget(stream)
                if self.counts is not None:
                    self.counts.forget(stream)
            if after - before and self.counts is not None:
                self.counts.complete = False  # until the gained streams' parts are read
        self.identity = identity
        self.state = State.LIVE
        return identity

    def _forget(self, stream: str) -> None:
        if self._cursors is not None:
            self._cursors.pop(stream, None)
        if self._live_from is not None:
            self._live_from.pop(stream, None)
        if self._behind is not None:
            self._behind.discard(stream)

    def wait_for_sync(self) -> None:
        self._waiting = True

    def close(self) -> None:
        self.state = State.CLOSED

    def offer(self, stream: str, seq: int, frame: bytes) -> bytes | None:
        """A live item for `stream`: returns the frame to send now, or None (held or a dup)."""
        if self._held is not None:
            held = self._held.get(stream)
            if held is not None:
                held.append((seq, frame))
                return None
        if self._waiting:
            return None
        if self._behind is not None and stream in self._behind:
            return None
        cursors = self._cursors
        if cursors is None:
            cursors = self._cursors = {}
            self._live_from = {}
        elif seq <= cursors.get(stream, 0):
            return None
        cursors[stream] = seq
        live_from = self._live_from
        if live_from is None:
            live_from = self._live_from = {}
        if stream not in live_from:
            live_from[stream] = seq
        return frame

    def in_flight(self) -> dict[str, tuple[int, int]]:
        """stream -> (first, last) seq sent live since the last sync: a sync leaves them out."""
        if not self._live_from or not self._cursors:
            return {}
        return {s: (first, self._cursors[s]) for s, first in self._live_from.items()}

    def begin_sync(self, streams: list[str]) -> None:
        if self._held is not None:
            raise ClientError(ErrorCode.SYNC_IN_PROGRESS)
        self._held = {s: [] for s in streams}

    def finish_sync(
        self, cursors: dict[str, int], has_more: set[str], fresh: Collection[str] = ()
    ) -> list[bytes]:
        """The sync-response went out with `cursors`; returns the held frames to send next.
        `fresh`: the streams it gave as they are now (asked without a cursor, or reset), items
        sent live before included; their next pages leave nothing out either."""
        held, self._held = self._held or {}, None
        self._waiting = False
        if self._cursors is None:
            self._cursors = {}
        if self._live_from is None:
            self._live_from = {}
        out: list[bytes] = []
        for stream, items in held.items():
            cursor = cursors.get(stream, 0)
            if stream in fresh:
                self._live_from.pop(stream, None)
            if stream in has_more:
                # Another page follows: live items wait, and what was sent live stays out of
                # the next pages too (of a stream with a cursor: `fresh` ones forgot it above).
                if self._behind is None:
                    self._behind = set()
                self._behind.add(stream)
                self._cursors[stream] = max(cursor, self._cursors.get(stream, 0))
                continue
            if self._behind is not None:
                self._behind.discard(stream)
            self._live_from.pop(stream, None)
            for seq, frame in sorted(items, key=lambda item: item[0]):
                if seq > cursor:
                    # sent after the response: on its way like any live item
                    self._live_from.setdefault(stream, seq)
                    out.append(frame)
                    cursor = seq
            self._cursors[stream] = cursor
        return out

    def abort_sync(self) -> list[bytes]:
        """The sync failed: live delivery goes on as before; returns the held frames."""
        held, self._held = self._held or {}, None
        out: list[bytes] = []
        for stream, items in held.items():
            for seq, frame in items:
                sent = self.offer(stream, seq, frame)
                if sent is not None:
                    out.append(sent)
        return out
