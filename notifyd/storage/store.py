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

from notifyd.core.errors import PruneBusy, StoreError
from notifyd.core.events import Change, Deleted, New, Updated

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
    unread: int


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
    cursors: dict[str, int] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)
    has_more: set[str] = field(default_factory=set)
    # bytes of wire text given so far, kept by the transaction: its queries share one budget
    size: int = 0


_WIRE = "notifyd.to_wire(n)::text"
# A stream's changes after a seq ({after}), leaving out a range ({skip_first} to {skip_last}),
# in seq order, at most {limit} and one more: its rows (item: the row) and its tombstones (item
# NULL, removed), so each item's last state and each deletion come once. Only the first
# {limit} get their wire text (the row's Notification JSON, or a tombstone's id); the one more
# (wire NULL) only tells that more follow. `fresh`: a row delivered after {after}.
_CHANGES = """
SELECT u.seq, u.id, u.removed, u.fresh,
       CASE WHEN row_number() OVER (ORDER BY u.seq) <= {limit}
            THEN CASE WHEN u.removed THEN u.id::text ELSE notifyd.to_wire(u.item)::text END
       END AS wire
FROM ((SELECT n.seq, n.id, n AS item, false AS removed, n.dseq > {after} AS fresh
       FROM notifyd.notifications n
       WHERE n.stream = {stream} AND n.seq > {after}
         AND n.seq NOT BETWEEN {skip_first} AND {skip_last}
       ORDER BY n.seq LIMIT {limit} + 1)
      UNION ALL
      (SELECT r.seq, r.id, NULL::notifyd.notifications, true, false FROM notifyd.removals r
       WHERE r.stream = {stream} AND r.seq > {after}
         AND r.seq NOT BETWEEN {skip_first} AND {skip_last}
       ORDER BY r.seq LIMIT {limit} + 1)) u
ORDER BY u.seq LIMIT {limit} + 1"""
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
SELECT stream, last_seq, pruned_below, seq, removed,
       CASE WHEN {_FITS.format(budget="$6", first="true")} THEN wire END AS wire
FROM (
    SELECT c.i, c.stream, coalesce(s.last_seq, 0) AS last_seq,
           coalesce(s.pruned_below, 0) AS pruned_below, r.seq, r.removed, r.wire,
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
    )
}) r ON true) page
ORDER BY i, seq"""
# One stream's page inside the transaction: its candidate rows (a query of (seq, removed, wire)
# with parameters from $3) cut at the bytes left ($1), the first row given anyway when nothing
# was given before it ($2).
_PAGE = f"""
SELECT seq, removed, upto,
       CASE WHEN {_FITS.format(budget="$1", first="$2::boolean")} THEN wire END AS wire
FROM (SELECT seq, removed, wire, {_RUNNING_BYTES.format(wire="wire", order="seq")} AS upto
      FROM ({{rows}}) r) page
ORDER BY seq"""
_AFTER_CURSOR = _PAGE.format(
    rows=_CHANGES.format(stream="$3", after="$4", skip_first="$6", skip_last="$7", limit="$5")
)
_CREATED_SINCE = _PAGE.format(
    rows=f"""
    SELECT n.seq, false AS removed,
           CASE WHEN row_number() OVER (ORDER BY n.seq) <= $5 THEN {_WIRE} END AS wire
    FROM notifyd.notifications n
    WHERE n.stream = $3 AND n.created_at > $4
    ORDER BY n.seq LIMIT $5 + 1"""
)
_LATEST = _PAGE.format(
    rows=f"""
    SELECT n.seq, false AS removed, {_WIRE} AS wire FROM notifyd.notifications n
    WHERE n.stream = $3 ORDER BY n.seq DESC LIMIT $4"""
)
# What a node missed of each stream while not listening: the changes above a seq, at most $3
# per stream (as events: a row delivered after that seq is new there, one delivered before it
# changed).
_CATCH_UP = f"""
SELECT a.stream, c.seq, c.id, c.removed, c.fresh, c.wire
FROM unnest($1::text[], $2::bigint[]) AS a(stream, after)
CROSS JOIN LATERAL ({
    _CHANGES.format(stream="a.stream", after="a.after", skip_first=0, skip_last=-1, limit="$3")
}) c
WHERE c.wire IS NOT NULL
ORDER BY a.stream, c.seq"""
CATCH_UP_PAGE = 10_000  # rows per stream and query when catching up
PRUNE_LOCK = 0x6E6F74696670  # advisory lock: one process prunes at a time


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, beyond rolling back an open transaction
    (asyncpg does that itself): nothing. The default reset is a round trip per query
    (RESET ALL, UNLISTEN *, CLOSE ALL, advisory unlock) undoing session state the daemon never
    sets: its settings are transaction-local (set_config(.., true), function SET clauses), its
    advisory lock transaction-level, and LISTEN is on a connection of its own."""


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
                dsn, min_size=1, max_size=max_size, command_timeout=30, reset=_keep_session
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
                "SELECT stream, last_seq, unread FROM notifyd.streams WHERE stream = ANY($1)",
                streams,
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return {r["stream"]: StreamState(r["last_seq"], r["unread"]) for r in rows}

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

    async def insert_demo(self, user_id: str, title: str, message: str, priority: str) -> int:
        """One notification for `user_id`, as an app would insert it (the demo page's form)."""
        if priority not in ("low", "medium", "high"):
            priority = "medium"
        try:
            nid: int = await self._pool.fetchval(
                "SELECT notifyd.notify($1, 'demo:message', $2, $3, '{}', $4)",
                user_id,
                title,
                message,
                priority,
            )
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreError(str(exc)) from exc
        return nid

    async def mark_read(
        self, user_stream: str, ids: tuple[int, ...] | None
    ) -> tuple[list[int], dt.datetime | None]:
        """Marks the given ids (all unread when None) of `user_stream` read. Returns the ids that
        changed and their read time. Rows of other streams are never touched."""
        where = "AND id = ANY($2::bigint[])" if ids is not None else ""
        args: list[object] = [user_stream] + ([list(ids)] if ids is not None else [])
        try:
            rows = await self._pool.fetch(
                "UPDATE notifyd.notifications SET read_at = now() "
                f"WHERE stream = $1 AND read_at IS NULL {where} RETURNING id, read_at",
                *args,
            )
        # and any error of the UPDATE: a statement timeout, a lock timeout, an app's trigger
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreError(str(exc)) from exc
        if not rows:
            return [], None
        return sorted(r["id"] for r in rows), rows[0]["read_at"]

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
            stream, seq, nid = r["stream"], r["seq"], r["id"]
            if r["removed"]:
                events.append(Deleted(nid, stream, seq))
            elif r["fresh"]:
                events.append(New(stream, seq, nid, orjson.Fragment(r["wire"].encode())))
            else:
                events.append(Updated(stream, seq, nid, orjson.Fragment(r["wire"].encode())))
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
        """Rows too large for a NOTIFY payload, by id: id -> (seq, wire)."""
        try:
            records = await self._pool.fetch(
                f"SELECT n.id, n.seq, {_WIRE} AS wire FROM notifyd.notifications n "
                "WHERE n.id = ANY($1::bigint[])",
                ids,
            )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return {r["id"]: (r["seq"], r["wire"].encode()) for r in records}

    async def sync(
        self,
        cursors: dict[str, int],
        latest: list[str],
        since: dt.datetime | None,
        limit: int,
        in_flight: dict[str, tuple[int, int]] | None = None,
        *,
        max_bytes: int,
    ) -> SyncResult:
        """Answer a sync-request in one snapshot. `cursors`: streams with a cursor; `latest`:
        streams without one (items created after `since`, else the latest `limit`).
        A page: at most `limit` rows per stream and, streams in that order, `max_bytes` of the
        rows' wire text in all, save its first row, given whatever its size. A stream cut short
        either way is in `has_more`, its cursor the last row given.
        `in_flight`: per stream, the seq range this connection was sent live since it last
        synced that stream; it may still be on its way, so a stream with a cursor leaves it out
        (never twice). A stream without a cursor, or reset, gets its rows as they are now."""
        in_flight = in_flight or {}
        if cursors and not latest:
            answered = await self._sync_after_cursors(cursors, limit, max_bytes, in_flight)
            if answered is not None:
                return answered
        return await self._sync_in_transaction(cursors, latest, since, limit, max_bytes, in_flight)

    async def _sync_in_transaction(
        self,
        cursors: dict[str, int],
        latest: list[str],
        since: dt.datetime | None,
        limit: int,
        max_bytes: int,
        in_flight: dict[str, tuple[int, int]],
    ) -> SyncResult:
        """sync() in a repeatable-read transaction: any mix of streams, resets included."""
        result = SyncResult()
        streams = [*cursors, *latest]
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
                        await self._latest(conn, stream, None, limit, max_bytes, last_seq, result)
                        continue
                    first, last = in_flight.get(stream, (0, -1))
                    rows = await self._page(
                        conn, _AFTER_CURSOR, max_bytes, result, stream, cursor, limit, first, last
                    )
                    self._take(stream, rows, limit, cursor, max(cursor, last), result)
                for stream in latest:
                    last_seq, _ = states.get(stream, (0, 0))
                    await self._latest(conn, stream, since, limit, max_bytes, last_seq, result)
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        return result

    async def _sync_after_cursors(
        self,
        cursors: dict[str, int],
        limit: int,
        max_bytes: int,
        in_flight: dict[str, tuple[int, int]],
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
        result = SyncResult()
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
        response's byte budget; counts the bytes of those given."""
        first = not result.notifications and not result.removed
        rows = await conn.fetch(query, max_bytes - result.size, first, *args)
        given = [r for r in rows if r["wire"] is not None]
        if given:
            result.size += given[-1]["upto"]
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
            if r["removed"]:
                result.removed.append(int(r["wire"]))
            else:
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
    ) -> None:
        """A stream without a cursor: items created after `since`, else its latest `limit`,
        as they are now (whether or not this connection was sent them live). The client is then
        at the stream's head, unless the page was cut: the next continues after it."""
        if since is not None:
            rows = await self._page(conn, _CREATED_SINCE, max_bytes, result, stream, since, limit)
        else:
            rows = await self._page(conn, _LATEST, max_bytes, result, stream, limit)
        start = rows[0]["seq"] - 1 if rows else last_seq
        self._take(stream, rows, limit, start, last_seq, result)
