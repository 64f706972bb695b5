"""Every SQL query the daemon runs (asyncpg only here, apart from the LISTEN connection in
listener.py). Rows come back as the protocol's Notification JSON, built by notifyd.to_wire()
in the database, so they are embedded in frames without decoding (orjson.Fragment).

Of notifyd, imports only notifyd.core (its errors): never the edge, the app or Redis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from dataclasses import dataclass, field

import asyncpg
import orjson

from notifyd.core.codes import ErrorCode
from notifyd.core.counts import Tallies
from notifyd.core.errors import ClientError, PruneBusy, StoreError
from notifyd.core.events import Change, Deleted, Marked, New, Updated

# Connection errors and server shutdowns: the database is unavailable, not the request bad.
_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # shutting down, cannot connect now
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.InvalidCatalogNameError,  # the database is gone
    asyncpg.ObjectNotInPrerequisiteStateError,  # it does not accept connections
    asyncpg.InternalClientError,  # a connection cut in the middle of a call
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class StreamState:
    last_seq: int


@dataclass(slots=True)
class Due:
    """What one run of the scheduler did: items expired, delivered and woken."""

    expired: int = 0
    delivered: int = 0
    woken: int = 0

    def __iadd__(self, other: Due) -> Due:
        self.expired += other.expired
        self.delivered += other.delivered
        self.woken += other.woken
        return self


@dataclass(slots=True)
class _StateBatch:
    """Stream-state reads asked for while the previous batch's query ran (or, with none
    running, in the same turn of the event loop): one query for all."""

    streams: set[str] = field(default_factory=set)
    done: asyncio.Task[dict[str, StreamState]] | None = None


@dataclass(slots=True)
class SyncResult:
    notifications: list[orjson.Fragment] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)  # ids deleted after the cursors
    marks: list[orjson.Fragment] = field(default_factory=list)  # the user's marks after them
    given: set[int] = field(default_factory=set)  # ids of the notifications given
    streams: frozenset[str] = frozenset()  # the streams of the connection
    cursors: dict[str, int] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)
    has_more: set[str] = field(default_factory=set)
    # bytes of wire text given so far, kept by the transaction: its queries share one budget
    size: int = 0


_WIRE = "notifyd.to_wire(n)::text"
# Who sees a row of {stream}: its user, for a user stream; {other} for another stream.
# A row's Notification JSON as a user sees it, in the query itself: its states (`s`) joined by
# _STATES (notifyd_private.viewer_states, which the planner inlines), then the object as the
# text of its row (row_to_json of notifyd.wire_row: a quarter of the cost of building the
# jsonb and printing it). (notifyd.to_wire(n, viewer) gives the same through two PL/pgSQL
# calls a row: more than the rest of a sync's query.)
_SEEN_BY = "CASE WHEN {stream} LIKE 'user:%' THEN {stream} ELSE {other} END"
_STATES = (
    "notifyd_private.viewer_states({n}, "
    + _SEEN_BY.format(stream="{viewer}", other="{other}")
    + ") s ON true"
)
_SEEN_WIRE = (
    "row_to_json(notifyd.wire_row({n}, s.seen_at, s.read_at, s.archived_at, s.snoozed_until, "
    "s.interacted_at, s.action))::text"
)
# A stream's changes after a seq ({after}), leaving out a range ({skip_first} to {skip_last}),
# in seq order, at most {limit} and one more: its rows ('n': the item as {viewer} sees it), its
# tombstones ('d'), and, of a user's own stream, the user's receipts of shared items ('r': the
# item as the user sees it) and marks ('a'), so that each item's last state and each deletion
# come once. Only the first {limit} get their wire text (a Notification's JSON by _SEEN_WIRE, a
# tombstone's id, a mark's JSON); the one more (wire NULL) only tells that more follow. `fresh`:
# a row delivered after {after}. A user stream is seen by its user, whatever {viewer} says.
_CHANGES = (
    """
SELECT u.seq, u.id, u.what, u.fresh, u.category, u.item_stream,
       CASE WHEN u.place <= {limit}
            THEN CASE u.what WHEN 'd' THEN u.id::text WHEN 'a' THEN u.mark::text
                 ELSE """
    + _SEEN_WIRE.format(n="u.item")
    + """ END
       END AS wire
FROM (SELECT u.*, row_number() OVER (ORDER BY u.seq) AS place
FROM ((SELECT n.seq, n.id, n AS item, NULL::jsonb AS mark, 'n' AS what,
              n.dseq > {after} AS fresh, n.category, n.stream AS item_stream
       FROM notifyd.notifications n
       WHERE n.stream = {stream} AND n.seq > {after}
         AND n.seq NOT BETWEEN {skip_first} AND {skip_last}
       ORDER BY n.seq LIMIT {limit} + 1)
      UNION ALL
      (SELECT r.seq, r.id, NULL::notifyd.notifications, NULL, 'd', false, NULL, NULL
       FROM notifyd.removals r
       WHERE r.stream = {stream} AND r.seq > {after}
         AND r.seq NOT BETWEEN {skip_first} AND {skip_last}
       ORDER BY r.seq LIMIT {limit} + 1)
      UNION ALL
      (SELECT r.seq, r.id, n, NULL, 'r', false, n.category, n.stream
       FROM notifyd.receipts r JOIN notifyd.notifications n ON n.id = r.id
       WHERE r.ustream = {stream} AND r.seq > {after}
         AND r.seq NOT BETWEEN {skip_first} AND {skip_last}
       ORDER BY r.seq LIMIT {limit} + 1)
      UNION ALL
      (SELECT m.seq, 0, NULL, jsonb_build_object(
                  'stream', m.ustream, 'seq', m.seq, 'state', m.kind,
                  'category', nullif(m.category, ''), 'target', m.stream, 'upto', m.upto,
                  'at', to_char(m.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
              'a', false, NULL, m.stream
       FROM notifyd.marks m
       WHERE m.ustream = {stream} AND m.seq > {after}
         AND m.seq NOT BETWEEN {skip_first} AND {skip_last}
       ORDER BY m.seq LIMIT {limit} + 1)) u
ORDER BY u.seq LIMIT {limit} + 1) u
LEFT JOIN LATERAL """
    + _STATES.format(n="u.item", viewer="{stream}", other="{viewer}")
    + """
ORDER BY u.seq"""
)
# A sync page is bounded by count (`limit` per stream) and by bytes: the rows' wire text,
# streams in turn, stops at the response's byte budget, save its first row, which goes however
# large (it would fit no page). Each stream's candidates are its first `limit` rows and one
# more, a probe (wire NULL: never built) that only tells that more follow. The running sum is
# taken in the query, so rows left out cross the wire as a seq without their text.
_FITS = "upto <= {budget} OR ({first} AND upto = octet_length(wire))"
_RUNNING_BYTES = "sum(octet_length({wire})) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING)"
# A sync-request with a cursor for every stream, in one statement (one snapshot, one round trip
# instead of a transaction of five): each stream's state beside the changes after its cursor,
# without the range sent live meanwhile; streams in the request's order, rows in seq order.
_SYNC_AFTER_CURSORS = f"""
SELECT stream, last_seq, pruned_below, seq, id, what, item_stream,
       CASE WHEN {_FITS.format(budget="$6", first="true")} THEN wire END AS wire
FROM (
    SELECT c.i, c.stream, coalesce(s.last_seq, 0) AS last_seq,
           coalesce(s.pruned_below, 0) AS pruned_below, r.seq, r.id, r.what, r.item_stream,
           r.wire,
           {_RUNNING_BYTES.format(wire="r.wire", order="c.i, r.seq")} AS upto
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) WITH ORDINALITY
         AS c(stream, after, skip_first, skip_last, i)
    LEFT JOIN notifyd.streams s ON s.stream = c.stream
    LEFT JOIN LATERAL ({
    _CHANGES.format(
        stream="c.stream",
        after="c.after",
        skip_first="c.skip_first",
        skip_last="c.skip_last",
        limit="$5",
        viewer="$7",
    )
}) r ON true) page
ORDER BY i, seq"""
# One stream's page inside the transaction: its candidate rows (a query of (seq, removed, wire)
# with parameters from $3) cut at the bytes left ($1), the first row given anyway when nothing
# was given before it ($2).
_PAGE = f"""
SELECT seq, id, what, item_stream, upto,
       CASE WHEN {_FITS.format(budget="$1", first="$2::boolean")} THEN wire END AS wire
FROM (SELECT seq, id, what, item_stream, wire,
             {_RUNNING_BYTES.format(wire="wire", order="seq")} AS upto
      FROM ({{rows}}) r) page
ORDER BY seq"""
_AFTER_CURSOR = _PAGE.format(
    rows=_CHANGES.format(
        stream="$3", after="$4", skip_first="$6", skip_last="$7", limit="$5", viewer="$8"
    )
)
# A row as the viewer sees it (a user stream by its user)
_VIEW = "notifyd.to_wire(n, " + _SEEN_BY.format(stream="n.stream", other="{viewer}") + ")::text"
# (The rows created since: found by the feed's index on (stream, created_at), kept apart from
# the ORDER BY seq .. LIMIT (OFFSET 0), which a generic plan would otherwise serve by walking
# the stream from its oldest item.)
_CREATED_SINCE = _PAGE.format(
    rows=f"""
    SELECT n.seq, n.id, 'n' AS what, n.stream AS item_stream,
           CASE WHEN row_number() OVER (ORDER BY n.seq) <= $5 THEN {_VIEW.format(viewer="$6")} END
               AS wire
    FROM (SELECT * FROM notifyd.notifications n
          WHERE n.stream = $3 AND n.created_at > $4 AND n.seq IS NOT NULL OFFSET 0) n
    ORDER BY n.seq LIMIT $5 + 1"""
)
_LATEST = _PAGE.format(
    rows=f"""
    SELECT n.seq, n.id, 'n' AS what, n.stream AS item_stream,
           {_VIEW.format(viewer="$5")} AS wire
    FROM notifyd.notifications n
    WHERE n.stream = $3 AND n.seq IS NOT NULL ORDER BY n.seq DESC LIMIT $4"""
)
# What a node missed of each stream while not listening: the changes above a seq, at most $3
# per stream (as events: a row delivered after that seq is new there, one delivered before it
# changed).
_CATCH_UP = f"""
SELECT a.stream, c.seq, c.id, c.what, c.fresh, c.category, c.item_stream, c.wire
FROM unnest($1::text[], $2::bigint[]) AS a(stream, after)
CROSS JOIN LATERAL ({
    _CHANGES.format(
        stream="a.stream", after="a.after", skip_first=0, skip_last=-1, limit="$3", viewer="NULL"
    )
}) c
WHERE c.wire IS NOT NULL
ORDER BY a.stream, c.seq"""
CATCH_UP_PAGE = 10_000  # rows per stream and query when catching up
PRUNE_LOCK = 0x6E6F74696670  # advisory lock: one process prunes at a time
# A user's counts grow with their receipts (their own states of shared items): a query that
# takes longer is cancelled (and read again later), not left to hold a connection.
COUNTS_TIMEOUT = 2.0
DUE_LOCK = 0x6E6F74696677  # advisory lock: one process runs what is due at a time
DEMO_ACTIONS = '[{"id": "accept", "label": "Accept"}, {"id": "decline", "label": "Decline"}]'
# Items a feed page looks at, at most: a filter that matches few items (archived, a rare
# category) answers a shorter page with a `next`, rather than scanning the whole feed.
FEED_SCAN = 1000
FEED_TIMEOUT = 2.0  # seconds: a page that takes longer is cancelled (the client gets unavailable)


# Every statement the daemon prepares is a lookup by key over its parameters, so one plan serves
# every execution: left to choose, PostgreSQL planned a sync-request's statement (four lateral
# branches per stream) afresh at each execution, half of its database time. And none runs long
# enough to gain from being compiled (JIT), which a generic plan's guessed costs could set off.
# Set once a connection is open, not as startup parameters, which a pooler (PgBouncer) refuses.
SESSION_SETTINGS = {"plan_cache_mode": "force_generic_plan", "jit": "off"}


async def _set_session(conn: asyncpg.Connection) -> None:
    for name, value in SESSION_SETTINGS.items():
        await conn.execute(f"SET {name} = {value}")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, beyond rolling back an open transaction
    (asyncpg does that itself): nothing. The default reset is a round trip per query
    (RESET ALL, UNLISTEN *, CLOSE ALL, advisory unlock) undoing session state the daemon never
    sets, or sets for good: its settings are SESSION_SETTINGS (the same on every connection) or
    transaction-local (set_config(.., true), function SET clauses), its advisory lock
    transaction-level, and LISTEN is on a connection of its own."""


class Store:
    """The daemon's queries over a small asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._state_batch: _StateBatch | None = None  # gathering reads for its query
        self._state_read: asyncio.Task[dict[str, StreamState]] | None = None  # the latest batch

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 10) -> Store:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                command_timeout=30,
                reset=_keep_session,
                init=_set_session,
            )
        except _UNAVAILABLE as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        return cls(pool)

    async def close(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout)
        except TimeoutError:
            self._pool.terminate()  # a hung server must not hold up shutdown

    async def ping(self, timeout: float = 2.0) -> None:
        """One query within `timeout`, waiting for a pool connection included."""
        try:
            async with asyncio.timeout(timeout):
                await self._pool.fetchval("SELECT 1")
        except Exception as exc:  # a probe: whatever failed, the database is not usable now
            raise StoreError(str(exc) or exc.__class__.__name__) from exc

    async def schema_version(self) -> int:
        """The highest migration applied to this database (0: none)."""
        try:
            # Two queries: a missing table fails a query that names it even in a dead branch.
            if not await self._pool.fetchval(
                "SELECT to_regclass('notifyd.schema_migrations') IS NOT NULL"
            ):
                return 0
            version = await self._pool.fetchval(
                "SELECT coalesce(max(version), 0) FROM notifyd.schema_migrations"
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return int(version)

    async def prune(self, days: float, batch: int) -> int | None:
        """One retention batch (notifyd.prune) in its own transaction: the count deleted, None
        when another process holds the retention lock; raises PruneBusy when a stream's
        counter row stayed locked by an app transaction (try again shortly)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
                    return None
                deleted: int = await conn.fetchval(
                    "SELECT notifyd.prune(make_interval(secs => $1), $2)", days * 86400.0, batch
                )
        except asyncpg.LockNotAvailableError as exc:
            raise PruneBusy(str(exc)) from exc
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return deleted

    async def stream_states(self, streams: list[str]) -> dict[str, StreamState]:
        """last_seq and unread of each stream that exists (the answer may hold other streams
        too). One such query runs at a time; the reads asked for meanwhile (a reconnect storm's
        handshakes, say) gather for the next, one query for all, made by a task of its own: a
        reader that gives up ends only its own wait. With none running, a read waits one turn
        of the event loop for the others of that turn."""
        batch = self._state_batch
        if batch is None:
            batch = self._state_batch = _StateBatch(set(streams))
            task = asyncio.get_running_loop().create_task(self._read_batch(batch, self._state_read))
            # retrieved here, so that a failure nobody waits for any more is not reported
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            batch.done = self._state_read = task
        else:
            batch.streams.update(streams)
        assert batch.done is not None
        return await asyncio.shield(batch.done)

    async def _read_batch(
        self, batch: _StateBatch, running: asyncio.Task[dict[str, StreamState]] | None
    ) -> dict[str, StreamState]:
        if running is not None and not running.done():
            await asyncio.wait([running])  # its outcome is its own readers'
        else:
            await asyncio.sleep(0)
        self._state_batch = None
        return await self._read_states(sorted(batch.streams))

    async def _read_states(self, streams: list[str]) -> dict[str, StreamState]:
        try:
            rows = await self._pool.fetch(
                "SELECT stream, last_seq FROM notifyd.streams WHERE stream = ANY($1)", streams
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return {r["stream"]: StreamState(r["last_seq"]) for r in rows}

    async def counts(self, viewer: str, streams: list[str]) -> list[tuple[str, int, Tallies]]:
        """A user's counts over `streams` (notifyd.counts): (stream, position, tallies) for
        each, exact as of the stream's last seq in one snapshot."""
        return (await self.counts_many([(viewer, streams)]))[0]

    async def counts_many(
        self, asked: list[tuple[str, list[str]]]
    ) -> list[list[tuple[str, int, Tallies]]]:
        """The counts of several users (viewer, streams) in one statement
        (notifyd.counts_many): for each, in that order, what counts() gives."""
        try:
            rows = await self._pool.fetch(
                "SELECT i, stream, last_seq, category, unread, unseen "
                "FROM notifyd.counts_many($1::text::jsonb)",
                orjson.dumps(asked).decode(),
                timeout=COUNTS_TIMEOUT,
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        parts: list[dict[str, tuple[int, dict[str, tuple[int, int]]]]] = [{} for _ in asked]
        for r in rows:
            _, tallies = parts[r["i"] - 1].setdefault(r["stream"], (r["last_seq"], {}))
            unread, unseen = tallies.get(r["category"], (0, 0))
            tallies[r["category"]] = (unread + r["unread"], unseen + r["unseen"])
        return [
            [(stream, position, tallies) for stream, (position, tallies) in one.items()]
            for one in parts
        ]

    async def revocations(self) -> dict[str, float]:
        """user id -> moment of revocation (seconds since the epoch)."""
        try:
            rows = await self._pool.fetch(
                "SELECT user_id, extract(epoch FROM revoked_at)::float8 AS at "
                "FROM notifyd.revocations"
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return {r["user_id"]: r["at"] for r in rows}

    async def insert_demo(
        self,
        user_id: str,
        title: str,
        message: str,
        priority: str,
        category: str | None = None,
        group_key: str | None = None,
        actor: str | None = None,
        actions: bool = False,
    ) -> int:
        """One notification for `user_id`, as an app would insert it (the demo page's form):
        its id, or that of the group it collapsed into. ClientError for a value the table
        refuses (a category too long, say)."""
        if priority not in ("low", "medium", "high"):
            priority = "medium"
        try:
            nid: int = await self._pool.fetchval(
                "SELECT notifyd.notify($1, 'demo:message', $2, $3, '{}', $4, "
                "category => $5, group_key => $6, actor => $7, actions => $8::jsonb)",
                user_id,
                title,
                message,
                priority,
                category,
                group_key,
                actor,
                DEMO_ACTIONS if actions else "[]",
            )
        except (asyncpg.CheckViolationError, asyncpg.StringDataRightTruncationError) as exc:
            raise ClientError(ErrorCode.INVALID_DATA, str(exc).removeprefix("notifyd: ")) from exc
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreError(str(exc)) from exc
        return nid

    async def set_state(
        self,
        user_id: str,
        state: str,
        on: bool,
        ids: tuple[int, ...] | None,
        category: str | None,
        streams: list[str],
        until: dt.datetime | None = None,
    ) -> tuple[list[int], dt.datetime]:
        """Sets (`on`) or clears `state` (seen, read, archived; snoozed, until `until`) of the
        user's items: the given ids, or all (narrowed to `category`) of `streams`, as notifyd's
        SQL functions do (notifyd_private.set_state). Returns the ids changed, and the time
        set (the transaction's)."""
        try:
            row = await self._pool.fetchrow(
                "SELECT notifyd_private.set_state($1, $2, CASE WHEN $3 THEN coalesce($4, now()) "
                "END, $5::bigint[], $6, $7::text[]) AS changed, now() AS at",
                user_id,
                state,
                on,
                until,
                list(ids) if ids is not None else None,
                category,
                streams,
            )
        # and any error of the statements: a statement timeout, a lock timeout, an app's trigger
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreError(str(exc)) from exc
        assert row is not None
        return list(row["changed"] or []), row["at"]

    async def feed(
        self,
        viewer: str,
        streams: list[str],
        state: str,
        category: str | None,
        before: tuple[dt.datetime, int] | None,
        limit: int,
    ) -> tuple[list[orjson.Fragment], tuple[dt.datetime, int] | None]:
        """A page of the user's feed (notifyd.feed): its items, newest first, and where the
        next page goes on from (None at the end of the feed)."""
        try:
            rows = await self._pool.fetch(
                "SELECT id, created_at, notification::text AS wire "
                "FROM notifyd.feed($1, $2::text[], $3, $4, $5, $6, $7 + 1, $8)",
                viewer,
                streams,
                state,
                category,
                before[0] if before else None,
                before[1] if before else None,
                limit,
                FEED_SCAN,
                timeout=FEED_TIMEOUT,
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        items = [r for r in rows if r["wire"] is not None][:limit]
        page = [orjson.Fragment(r["wire"]) for r in items]
        if len(rows) > limit or (rows and rows[-1]["wire"] is None):
            # a page more than full, or cut by the scan: the next goes on after the last
            # item given (or, of a scan that found fewer, the last item looked at)
            last = items[-1] if len(items) == limit else rows[-1]
            return page, (last["created_at"], last["id"])
        return page, None

    async def act(self, user_id: str, item_id: int, action: str, streams: list[str]) -> dt.datetime:
        """Records that the user took `action` of item `item_id` (notifyd.act): the time.
        ClientError when the user does not receive the item or it has no such action."""
        try:
            at: dt.datetime = await self._pool.fetchval(
                "SELECT notifyd.act($1, $2, $3, $4::text[])", user_id, item_id, action, streams
            )
        except asyncpg.InvalidParameterValueError as exc:
            raise ClientError(ErrorCode.INVALID_DATA, str(exc).removeprefix("notifyd: ")) from exc
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreError(str(exc)) from exc
        return at

    async def run_due(self, batch: int = 1000) -> Due | None:
        """Expires, delivers and wakes what is due (notifyd.expire, notifyd.deliver,
        notifyd.wake: at most `batch` of each) in a transaction of its own: what it did, or None
        when another process holds the lock."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", DUE_LOCK):
                    return None
                row = await conn.fetchrow(
                    "SELECT notifyd.expire($1) AS expired, notifyd.deliver($1) AS delivered, "
                    "notifyd.wake($1) AS woken",
                    batch,
                )
        except asyncpg.LockNotAvailableError as exc:
            raise PruneBusy(str(exc)) from exc
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        assert row is not None
        return Due(row["expired"], row["delivered"], row["woken"])

    async def changes_after(self, after: dict[str, int], limit: int = 10000) -> list[Change]:
        """The changes above the given seq per stream, at most `limit` per stream, as events in
        seq order within each stream: rows first delivered above it as New, rows delivered
        before it and changed since as Updated, tombstones as Deleted."""
        if not after:
            return []
        try:
            records = await self._pool.fetch(_CATCH_UP, list(after), list(after.values()), limit)
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        events: list[Change] = []
        for r in records:
            stream, seq, nid, what = r["stream"], r["seq"], r["id"], r["what"]
            if what == "d":
                events.append(Deleted(nid, stream, seq))
            elif what == "a":
                m = orjson.loads(r["wire"])
                events.append(
                    Marked(stream, seq, m["state"], m["category"], m["target"], m["upto"], m["at"])
                )
            else:
                wire = orjson.Fragment(r["wire"].encode())
                if what == "r":
                    events.append(
                        Updated(stream, seq, nid, wire, viewer=stream, item_stream=r["item_stream"])
                    )
                elif r["fresh"]:
                    events.append(New(stream, seq, nid, wire, category=r["category"] or ""))
                else:
                    update = Updated(stream, seq, nid, wire)
                    update.pending = update.shared  # each of its users sees their own state
                    events.append(update)
        return events

    async def catch_up(self, after: dict[str, int]) -> list[Change]:
        """Every change above the given seq per stream, fetched in pages of CATCH_UP_PAGE
        changes per stream: what a node missed while not listening."""
        out: list[Change] = []
        while after:
            events = await self.changes_after(after, CATCH_UP_PAGE)
            out.extend(events)
            last: dict[str, int] = {}
            counts: dict[str, int] = {}
            for e in events:
                counts[e.stream] = counts.get(e.stream, 0) + 1
                last[e.stream] = e.seq
            after = {s: seq for s, seq in last.items() if counts[s] >= CATCH_UP_PAGE}
        return out

    async def fetch_ids(self, ids: list[int]) -> dict[int, tuple[int, bytes]]:
        """Rows too large for a NOTIFY payload, by id: id -> (seq, wire), a user's own item as
        its user sees it."""
        try:
            records = await self._pool.fetch(
                "SELECT n.id, n.seq, notifyd.to_wire(n, CASE WHEN n.user_id IS NOT NULL "
                "THEN n.stream END)::text AS wire FROM notifyd.notifications n "
                "WHERE n.id = ANY($1::bigint[])",
                ids,
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return {r["id"]: (r["seq"], r["wire"].encode()) for r in records}

    async def fetch_receipts(
        self, wanted: list[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[int, bytes]]:
        """Shared items as users see them, by (user stream, id) of their receipts (too large
        for a payload): -> (the receipt's seq, wire)."""
        try:
            records = await self._pool.fetch(
                "SELECT r.ustream, r.id, r.seq, notifyd.to_wire(n, r.ustream)::text AS wire "
                "FROM unnest($1::text[], $2::bigint[]) w(ustream, id) "
                "JOIN notifyd.receipts r ON (r.ustream, r.id) = (w.ustream, w.id) "
                "JOIN notifyd.notifications n ON n.id = r.id",
                [v for v, _ in wanted],
                [i for _, i in wanted],
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return {(r["ustream"], r["id"]): (r["seq"], r["wire"].encode()) for r in records}

    async def views(
        self, wanted: list[tuple[int, list[str]]]
    ) -> dict[int, tuple[int, dict[str, bytes]]]:
        """Shared items as each of the given users (their streams) sees them: id -> (seq,
        user stream -> wire)."""
        try:
            pairs = [(i, viewer) for i, viewers in wanted for viewer in viewers]
            records = await self._pool.fetch(
                "SELECT n.id, n.seq, w.viewer, notifyd.to_wire(n, w.viewer)::text AS wire "
                "FROM unnest($1::bigint[], $2::text[]) w(id, viewer) "
                "JOIN notifyd.notifications n ON n.id = w.id",
                [i for i, _ in pairs],
                [v for _, v in pairs],
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        out: dict[int, tuple[int, dict[str, bytes]]] = {}
        for r in records:
            out.setdefault(r["id"], (r["seq"], {}))[1][r["viewer"]] = r["wire"].encode()
        return out

    async def sync(
        self,
        cursors: dict[str, int],
        latest: list[str],
        since: dt.datetime | None,
        limit: int,
        in_flight: dict[str, tuple[int, int]] | None = None,
        *,
        max_bytes: int,
        viewer: str,
    ) -> SyncResult:
        """Answer a sync-request in one snapshot. `cursors`: streams with a cursor; `latest`:
        streams without one (items created after `since`, else the latest `limit`).
        A page: at most `limit` rows per stream and, streams in that order, `max_bytes` of the
        rows' wire text in all, save its first row, given whatever its size. A stream cut short
        either way is in `has_more`, its cursor the last row given.
        `in_flight`: per stream, the seq range this connection was sent live since it last
        synced that stream; it may still be on its way, so a stream with a cursor leaves it out
        (never twice). A stream without a cursor, or reset, gets its rows as they are now.
        Every item is as `viewer` (the user's stream) sees it."""
        in_flight = in_flight or {}
        if cursors and not latest:
            answered = await self._sync_after_cursors(cursors, limit, max_bytes, in_flight, viewer)
            if answered is not None:
                return answered
        return await self._sync_in_transaction(
            cursors, latest, since, limit, max_bytes, in_flight, viewer
        )

    async def _sync_in_transaction(
        self,
        cursors: dict[str, int],
        latest: list[str],
        since: dt.datetime | None,
        limit: int,
        max_bytes: int,
        in_flight: dict[str, tuple[int, int]],
        viewer: str,
    ) -> SyncResult:
        """sync() in a repeatable-read transaction: any mix of streams, resets included."""
        streams = [*cursors, *latest]
        result = SyncResult(streams=frozenset(streams))
        try:
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                states = {
                    r["stream"]: (r["last_seq"], r["pruned_below"])
                    for r in await conn.fetch(
                        "SELECT stream, last_seq, pruned_below FROM notifyd.streams "
                        "WHERE stream = ANY($1)",
                        streams,
                    )
                }
                for stream, cursor in cursors.items():
                    last_seq, pruned_below = states.get(stream, (0, 0))
                    if cursor > last_seq or cursor + 1 < pruned_below:
                        result.reset.append(stream)
                        await self._latest(
                            conn, stream, None, limit, max_bytes, last_seq, result, viewer
                        )
                        continue
                    first, last = in_flight.get(stream, (0, -1))
                    rows = await self._page(
                        conn,
                        _AFTER_CURSOR,
                        max_bytes,
                        result,
                        stream,
                        cursor,
                        limit,
                        first,
                        last,
                        viewer,
                    )
                    self._take(stream, rows, limit, cursor, max(cursor, last), result)
                for stream in latest:
                    last_seq, _ = states.get(stream, (0, 0))
                    await self._latest(
                        conn, stream, since, limit, max_bytes, last_seq, result, viewer
                    )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return result

    async def _sync_after_cursors(
        self,
        cursors: dict[str, int],
        limit: int,
        max_bytes: int,
        in_flight: dict[str, tuple[int, int]],
        viewer: str,
    ) -> SyncResult | None:
        """sync() when every stream has a cursor (a reconnecting client's request): one
        statement; None when a stream must be reset (its cursor is ahead of the stream or
        behind what retention kept), which sync() answers in a transaction of its own."""
        streams = list(cursors)
        skips = [in_flight.get(stream, (0, -1)) for stream in streams]
        try:
            rows = await self._pool.fetch(
                _SYNC_AFTER_CURSORS,
                streams,
                [cursors[s] for s in streams],
                [first for first, _ in skips],
                [last for _, last in skips],
                limit,
                max_bytes,
                viewer,
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        found: dict[str, list[asyncpg.Record]] = {}
        for r in rows:  # every stream has a row, with seq NULL when nothing follows its cursor
            stream = r["stream"]
            if stream not in found:
                cursor = cursors[stream]
                if cursor > r["last_seq"] or cursor + 1 < r["pruned_below"]:
                    return None
                found[stream] = []
            if r["seq"] is not None:
                found[stream].append(r)
        result = SyncResult(streams=frozenset(streams))
        for stream, (_, last) in zip(streams, skips, strict=True):
            cursor = cursors[stream]
            self._take(stream, found[stream], limit, cursor, max(cursor, last), result)
        return result

    @staticmethod
    async def _page(
        conn: asyncpg.pool.PoolConnectionProxy,
        query: str,
        max_bytes: int,
        result: SyncResult,
        *args: object,
    ) -> list[asyncpg.Record]:
        """One stream's candidate rows by `query` (see _PAGE), cut at what is left of the
        response's byte budget. The budget is spent by every candidate's bytes, given or not,
        as _SYNC_AFTER_CURSORS's running sum over all streams spends it: a stream cut short
        leaves the next streams what is left after all of its candidates."""
        first = not result.notifications and not result.removed and not result.marks
        rows = await conn.fetch(query, max_bytes - result.size, first, *args)
        if rows:
            result.size += rows[-1]["upto"] or 0
        return rows

    @staticmethod
    def _take(
        stream: str,
        rows: list[asyncpg.Record],
        limit: int,
        start: int,
        floor: int,
        result: SyncResult,
    ) -> None:
        """A stream's candidate rows in seq order: those that came with their wire text go
        out (a prefix). When any was left out, by count or by bytes, the next page continues
        after the last one given (from `start` when none was); otherwise the cursor is the last
        one given or `floor` (what the client has without them), whichever is higher."""
        given = list(itertools.takewhile(lambda r: r["wire"] is not None, rows[:limit]))
        if len(given) < len(rows):
            result.has_more.add(stream)
            result.cursors[stream] = given[-1]["seq"] if given else start
        else:
            result.cursors[stream] = max(given[-1]["seq"], floor) if given else floor
        for r in given:
            what = r["what"]
            if what == "d":
                result.removed.append(int(r["wire"]))
            elif what in ("a", "r") and r["item_stream"] not in result.streams:
                pass  # a mark or receipt of a stream this connection does not receive
            elif what == "a":
                result.marks.append(orjson.Fragment(r["wire"]))
            elif r["id"] not in result.given:  # a shared item, and the user's receipt of it
                result.given.add(r["id"])
                result.notifications.append(orjson.Fragment(r["wire"]))

    async def _latest(
        self,
        conn: asyncpg.pool.PoolConnectionProxy,
        stream: str,
        since: dt.datetime | None,
        limit: int,
        max_bytes: int,
        last_seq: int,
        result: SyncResult,
        viewer: str,
    ) -> None:
        """A stream without a cursor: items created after `since`, else its latest `limit`,
        as they are now (whether or not this connection was sent them live). The client is then
        at the stream's head, unless the page was cut: the next continues after it."""
        if since is not None:
            rows = await self._page(
                conn, _CREATED_SINCE, max_bytes, result, stream, since, limit, viewer
            )
        else:
            rows = await self._page(conn, _LATEST, max_bytes, result, stream, limit, viewer)
        start = rows[0]["seq"] - 1 if rows else last_seq
        self._take(stream, rows, limit, start, last_seq, result)
