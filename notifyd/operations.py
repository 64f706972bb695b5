"""Each client operation, once: what sync, the state changes (mark-seen, mark-read,
mark-unread, archive, unarchive, snooze), a feed page, an action taken, unread-count, the
presence query and ping mean,
for both the WebSocket (hub.py) and the HTTP API (edge/http_api.py). An operation takes the
caller's Identity and its decoded request (core/protocol.py) and returns the answer's `data`,
or raises ClientError with the code the client gets (`forbidden`, `unavailable`, ...); each
edge frames the answer its own way (a server frame with the request's ref, a JSON body) and
does what only it needs around the call (the WebSocket's hold-back of live items during a
sync: session.begin_sync/finish_sync).

A new client operation goes here: a method of Operations and its row in ROUTES, from which
both edges serve it (hub.py dispatches a frame by its class, http_api.py a request by its
method and path); its request's decoding (a frame, a query) is core/protocol.py's.

This module never touches a socket; the database only through store.py, Redis only through
cluster.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from notifyd.cluster import ClusterPresence
from notifyd.config import Settings
from notifyd.core.auth import Identity
from notifyd.core.codes import ErrorCode
from notifyd.core.counts import Counts, frame_data
from notifyd.core.errors import ClientError, StoreError
from notifyd.core.presence import PresencePolicy
from notifyd.core.protocol import (
    Act,
    Archive,
    MarkAllRead,
    MarkRead,
    MarkSeen,
    MarkUnread,
    PageRequest,
    Ping,
    PresenceQuery,
    Snooze,
    StateChange,
    SyncRequest,
    Unarchive,
    act_request,
    format_epoch,
    format_time,
    mark_all_read_request,
    page_cursor,
    page_request,
    poll_request,
    state_request,
    unread_count_request,
)
from notifyd.ops.metrics import Metrics
from notifyd.storage.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Synced:
    """A sync's answer: `data` (that of notification:sync-response, or the HTTP body), and what
    a connection's session needs to release what it held back (session.finish_sync)."""

    data: dict[str, Any]
    cursors: dict[str, int]
    has_more: set[str]
    fresh: set[str]  # streams given as they are now (asked without a cursor, or reset)


class Operations:
    """The client operations of one process. `settings` is read at each call (a reload
    applies to the next request)."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        presence: ClusterPresence,
        policy: PresencePolicy,
        settings: Callable[[], Settings],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.presence = presence
        self.policy = policy
        self._settings = settings

    # -- sync ---------------------------------------------------------------------------

    def sync_streams(self, identity: Identity, req: SyncRequest, via: str) -> list[str]:
        """The streams a sync of `identity` covers: every one it receives; `forbidden` when
        `req` has a cursor for another. `via`: "websocket" or "http", for the metrics. Apart
        from sync() so that a connection holds its live items back from this moment on."""
        self.metrics.sync_requests[via] += 1
        allowed = identity.streams
        for stream in req.cursors:
            if stream not in allowed:
                raise ClientError(ErrorCode.FORBIDDEN, f"not subscribed to stream {stream[:80]!r}")
        return list(allowed)

    async def sync(
        self,
        req: SyncRequest,
        streams: list[str],
        viewer: str,
        in_flight: dict[str, tuple[int, int]] | None = None,
    ) -> Synced:
        """One page of what `req` asks of `streams` (sync_streams()); `in_flight`: what a
        connection was sent live since its last sync, left out (session.in_flight)."""
        s = self._settings()
        latest = [stream for stream in streams if stream not in req.cursors]
        try:
            result = await self.store.sync(
                req.cursors,
                latest,
                req.since,
                req.limit or s.sync_limit,
                in_flight,
                max_bytes=s.max_response_bytes,
                viewer=viewer,
            )
        except StoreError as exc:
            log.warning("sync failed: %s", exc)
            raise ClientError(ErrorCode.UNAVAILABLE) from exc
        return Synced(
            {
                "notifications": result.notifications,
                "removed": result.removed,
                "marks": result.marks,
                "cursors": result.cursors,
                "reset": result.reset,
                "hasMore": bool(result.has_more),
            },
            result.cursors,
            result.has_more,
            {*latest, *result.reset},  # given as they are now, live items included
        )

    async def poll(self, identity: Identity, req: SyncRequest) -> dict[str, Any]:
        """A sync for no connection (the HTTP API's poll): the data of one page."""
        synced = await self.sync(
            req, self.sync_streams(identity, req, "http"), identity.user_stream
        )
        return synced.data

    # -- states and counts --------------------------------------------------------------

    async def change_state(self, identity: Identity, req: StateChange) -> dict[str, Any]:
        """Sets or clears one state of the user's items in the streams it receives: the given
        ids, or all (a mark for seen, read and archived). Every device, the asking one
        included, gets each change as notification:updated or notification:marked. Returns
        the answer's data: notification:read's for a read mark, else notification:changed's."""
        try:
            changed, at = await self.store.set_state(
                identity.user_id,
                req.state,
                req.on,
                req.ids,
                req.category,
                list(identity.streams),
                req.until,
            )
        except StoreError as exc:
            log.warning("changing %s failed: %s", req.state, exc)
            raise ClientError(ErrorCode.UNAVAILABLE) from exc
        if isinstance(req, MarkRead | MarkAllRead):
            marked = req.ids is None or bool(changed)
            return {"ids": changed, "readAt": format_time(at) if marked else None}
        return {"ids": changed, "all": req.ids is None}

    async def page(self, identity: Identity, req: PageRequest) -> dict[str, Any]:
        """The data of notification:page-response: a page of the user's feed over the streams it
        receives, newest first, and the `next` cursor (null at the end)."""
        try:
            items, after = await self.store.feed(
                identity.user_stream,
                list(identity.streams),
                req.state,
                req.category,
                req.before,
                req.limit,
            )
        except StoreError as exc:
            log.warning("reading a feed page failed: %s", exc)
            raise ClientError(ErrorCode.UNAVAILABLE) from exc
        return {"notifications": items, "next": page_cursor(*after) if after else None}

    async def act(self, identity: Identity, req: Act) -> dict[str, Any]:
        """Records that the user took an action of an item (it is read, too); the data of
        notification:acted. Every device gets the change as notification:updated."""
        try:
            at = await self.store.act(identity.user_id, req.id, req.action, list(identity.streams))
        except StoreError as exc:
            log.warning("recording an action failed: %s", exc)
            raise ClientError(ErrorCode.UNAVAILABLE) from exc
        return {"id": req.id, "action": req.action, "interactedAt": format_time(at)}

    async def unread_count(self, identity: Identity) -> dict[str, Any]:
        """The data of notification:unread-count: the user's counts over its streams."""
        try:
            rows = await self.store.counts(identity.user_stream, list(identity.streams))
        except StoreError as exc:
            log.warning("reading the counts failed: %s", exc)
            raise ClientError(ErrorCode.UNAVAILABLE) from exc
        counts = Counts()
        for stream, position, tallies in rows:
            counts.read(stream, position, tallies, own=False)
        return frame_data(counts.total())

    # -- presence and ping --------------------------------------------------------------

    async def presence_query(self, identity: Identity, req: PresenceQuery) -> dict[str, Any]:
        """The data of presence:state; `forbidden` unless the roles of `identity` may see
        presence, and the count of every role asked for."""
        viewer = identity.roles
        if not self.policy.may_query(viewer):
            raise ClientError(ErrorCode.FORBIDDEN, "presence is not visible to your roles")
        hidden = [r for r in req.roles if not self.policy.countable(viewer, r)]
        if hidden:
            raise ClientError(
                ErrorCode.FORBIDDEN,
                f"the presence of role {hidden[0][:80]!r} is not visible to you",
            )
        users, counts = await self.presence.query(req.user_ids, req.roles)
        data: dict[str, Any] = {
            "users": [
                {
                    "userId": u.user_id,
                    "online": u.online,
                    "lastSeen": format_epoch(u.last_seen) if u.last_seen is not None else None,
                }
                for u in (self.policy.shown(viewer, user) for user in users)
            ]
        }
        if req.roles:
            data["roles"] = counts
        return data

    @staticmethod
    def ping(req: Ping) -> dict[str, Any]:
        """The data of pong: the client's timestamp, or the server's time in milliseconds."""
        return {
            "timestamp": req.timestamp if req.timestamp is not None else int(time.time() * 1000)
        }


# -- the table both edges serve -----------------------------------------------------------------

Run = Callable[[Operations, Identity, Any, str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Route:
    """One client operation as the edges serve it. `event`: the class of its decoded client
    frame (core/protocol.py), or None when only the HTTP API serves it; `answer`: the type of
    the server frame that answers it on a WebSocket; `http`: its (method, path) on the HTTP
    API, and `from_query` the decoder of that request's query (core/protocol.py), or None when
    only a WebSocket serves it; `run(operations, identity, request, origin)`: the operation,
    where `origin` is the connection id, or "http"."""

    event: type | None
    answer: str
    http: tuple[str, str] | None
    from_query: Callable[[dict[str, list[str]]], Any] | None
    run: Run


def _change_state(
    ops: Operations, who: Identity, req: Any, origin: str
) -> Awaitable[dict[str, Any]]:
    return ops.change_state(who, req)


# A sync on a WebSocket is hub.py's own (it holds live items back until its answer is out),
# and ping and auth are answered there without the database: this table holds the rest.
ROUTES: tuple[Route, ...] = (
    Route(
        SyncRequest,
        "notification:sync-response",
        ("GET", "/v1/notifications"),
        poll_request,
        lambda ops, who, req, origin: ops.poll(who, req),
    ),
    Route(
        MarkRead,
        "notification:read",
        ("POST", "/v1/notifications/read"),
        state_request(MarkRead),
        _change_state,
    ),
    Route(
        MarkAllRead,
        "notification:read",
        ("POST", "/v1/notifications/read-all"),
        mark_all_read_request,
        _change_state,
    ),
    *(
        Route(cls, "notification:changed", ("POST", path), state_request(cls), _change_state)
        for cls, path in (
            (MarkSeen, "/v1/notifications/seen"),
            (MarkUnread, "/v1/notifications/unread"),
            (Archive, "/v1/notifications/archive"),
            (Unarchive, "/v1/notifications/unarchive"),
            (Snooze, "/v1/notifications/snooze"),
        )
    ),
    Route(
        PageRequest,
        "notification:page-response",
        ("GET", "/v1/feed"),
        page_request,
        lambda ops, who, req, origin: ops.page(who, req),
    ),
    Route(
        Act,
        "notification:acted",
        ("POST", "/v1/notifications/act"),
        act_request,
        lambda ops, who, req, origin: ops.act(who, req),
    ),
    Route(
        None,
        "notification:unread-count",
        ("GET", "/v1/unread-count"),
        unread_count_request,
        lambda ops, who, req, origin: ops.unread_count(who),
    ),
    Route(
        PresenceQuery,
        "presence:state",
        None,
        None,
        lambda ops, who, req, origin: ops.presence_query(who, req),
    ),
)
BY_EVENT: dict[type, Route] = {r.event: r for r in ROUTES if r.event is not None}
BY_HTTP: dict[tuple[str, str], Route] = {r.http: r for r in ROUTES if r.http is not None}
