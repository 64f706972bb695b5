# The store's stream-state reads (what every new connection reads for its unread count and
# catch-up floors): reads asked for together share one query, each reader gets its own
# streams right, a failure reaches every reader of the batch, and a reader giving up only
# itself; and a reconnecting client's sync (a cursor for every stream) answered in one
# statement exactly as the general transaction answers it.
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from asyncpg.transaction import Transaction
from hypothesis import given
from hypothesis import strategies as st
from support import DATABASE_EXAMPLES

import notifyd.storage.store as store_module
from notifyd.core.errors import StoreError
from notifyd.core.events import Marked, Updated
from notifyd.storage.migrate import migrations
from notifyd.storage.store import Store

STATE_QUERY = "FROM notifyd.streams WHERE stream = ANY"


async def _pool(dsn: str, queries: list[str]) -> asyncpg.Pool:
    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda q: queries.append(q.query))

    return await asyncpg.create_pool(dsn, min_size=1, max_size=4, init=log_queries)


async def test_reads_of_one_turn_share_one_query(fresh_db: str) -> None:
    queries: list[str] = []
    pool = await _pool(fresh_db, queries)
    try:
        for i in range(20):  # user u<i> gets i notifications, one of them read
            await pool.execute(
                "INSERT INTO notifyd.notifications (user_id, type, title, read_at) "
                "SELECT $1, 't', 'n', CASE WHEN k = 1 THEN now() END "
                "FROM generate_series(1, $2) k",
                f"u{i}",
                i,
            )
        await pool.execute("SELECT notifyd.broadcast('t', 'all', 'm')")
        store = Store(pool)
        queries.clear()

        answers = await asyncio.gather(
            *(store.stream_states([f"user:u{i}", "all"]) for i in range(20))
        )
        assert sum(STATE_QUERY in q for q in queries) == 1
        for i, states in enumerate(answers):
            own = states.get(f"user:u{i}")
            if i == 0:
                assert own is None  # a stream that does not exist yet
            else:
                assert own is not None
                assert own.last_seq == i
            assert states["all"].last_seq == 1

        # reads that do not overlap in time each make their own query
        queries.clear()
        assert (await store.stream_states(["user:u3"]))["user:u3"].last_seq == 3
        assert (await store.stream_states(["user:u4"]))["user:u4"].last_seq == 4
        assert sum(STATE_QUERY in q for q in queries) == 2
    finally:
        await pool.close()


async def test_a_reader_giving_up_leaves_the_others_their_answer(fresh_db: str) -> None:
    queries: list[str] = []
    pool = await _pool(fresh_db, queries)
    try:
        await pool.execute("SELECT notifyd.notify('u1', 't', 'n', 'm')")
        store = Store(pool)
        # the first reader (the one that started the batch) and a joiner give up at once
        first = asyncio.ensure_future(store.stream_states(["user:u1"]))
        joiner = asyncio.ensure_future(store.stream_states(["user:u2"]))
        others = [asyncio.ensure_future(store.stream_states(["user:u1"])) for _ in range(5)]
        await asyncio.sleep(0)
        joiner.cancel()
        first.cancel()
        results = await asyncio.gather(*others)
        assert [r["user:u1"].last_seq for r in results] == [1] * 5
        assert first.cancelled() and joiner.cancelled()
        assert sum(STATE_QUERY in q for q in queries) == 1

        # every reader giving up: the query still ends quietly, and the next reads work
        quitters = [asyncio.ensure_future(store.stream_states(["user:u1"])) for _ in range(3)]
        await asyncio.sleep(0)
        for quitter in quitters:
            quitter.cancel()
        await asyncio.gather(*quitters, return_exceptions=True)
        assert (await store.stream_states(["user:u1"]))["user:u1"].last_seq == 1
    finally:
        await pool.close()


async def test_a_failed_read_reaches_every_reader(fresh_db: str) -> None:
    pool = await _pool(fresh_db, [])
    store = Store(pool)
    await pool.close()  # the database is unavailable
    results = await asyncio.gather(
        *(store.stream_states(["user:u1"]) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StoreError) for r in results), results
    with pytest.raises(StoreError):
        await store.stream_states(["user:u1"])


async def test_no_query_leaves_session_state_on_a_pool_connection(fresh_db: str) -> None:
    """The pool gives connections back without asyncpg's reset query: that holds only while
    every query leaves the session as it found it (settings, LISTEN, advisory locks, open
    transactions). One connection, so every check sees the backend that ran them all."""
    store = await Store.open(fresh_db, max_size=1)
    try:
        nid = await store.insert_demo("u1", "t", "m", "low")
        await store.set_state("u1", "read", True, (nid,), None, ["user:u1", "all"])
        await store.set_state("u1", "read", True, None, None, ["user:u1", "all"])
        await store.set_state("u1", "read", False, None, None, ["user:u1", "all"])
        await store.counts("user:u1", ["user:u1", "all"])
        await store.run_due()
        await store.feed("user:u1", ["user:u1", "all"], "unread", None, None, 10)
        await store.stream_states(["user:u1", "all"])
        await store.sync({"user:u1": 0}, ["all"], None, 10, max_bytes=2**20, viewer="user:u1")
        await store.catch_up({"user:u1": 0})
        await store.fetch_ids([nid])
        await store.revocations()
        await store.prune(30, 10)  # the advisory lock and the function's SET clauses
        async with store._pool.acquire() as conn:
            state = await conn.fetchrow(
                "SELECT coalesce(current_setting('notifyd.origin', true), '') AS origin,"
                " current_setting('lock_timeout') AS lock_timeout,"
                " (SELECT count(*) FROM pg_listening_channels()) AS channels,"
                " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                "  AND pid = pg_backend_pid()) AS advisory_locks,"
                " (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors"
            )
            assert state is not None
            assert dict(state) == {
                "origin": "",
                "lock_timeout": "0",
                "channels": 0,
                "advisory_locks": 0,
                "cursors": 0,
            }
            assert not conn.is_in_transaction()
    finally:
        await store.close()


async def test_notifying_users_in_one_order_does_not_deadlock(fresh_db: str) -> None:
    """What the README says of many users in one transaction: each row locks its stream's
    counter until commit, so two transactions taking the same users in opposite orders
    deadlock, and in one order they only wait for each other."""
    notify = "SELECT notifyd.notify($1, 't', 'n', 'm')"

    async def both(first: list[str], second: list[str]) -> list[BaseException | None]:
        a, b = await asyncpg.connect(fresh_db), await asyncpg.connect(fresh_db)
        try:
            ta, tb = a.transaction(), b.transaction()
            await ta.start()
            await tb.start()
            await a.execute(notify, first[0])
            await b.execute(notify, second[0])

            async def rest(conn: asyncpg.Connection, tx: Transaction, users: list[str]) -> None:
                for user in users[1:]:
                    await conn.execute(notify, user)
                await tx.commit()

            outcomes = await asyncio.gather(
                rest(a, ta, first), rest(b, tb, second), return_exceptions=True
            )
            return [o if isinstance(o, BaseException) else None for o in outcomes]
        finally:
            await a.close()
            await b.close()

    crossed = await both(["ua", "ub"], ["ub", "ua"])
    assert sum(isinstance(o, asyncpg.DeadlockDetectedError) for o in crossed) == 1, crossed
    # both in user order: the first waits for ub until the second has committed
    ordered = await both(["ua", "ub"], ["ub", "uc"])
    assert ordered == [None, None]


async def test_a_delete_takes_the_stream_counter_before_the_tallies(fresh_db: str) -> None:
    """An INSERT takes a stream's counter (per row), then its tallies (after its rows); a DELETE
    takes them in the same order, so the two never deadlock: while another transaction holds
    the counter, a DELETE of one of the stream's items waits with the tallies untouched."""
    setup, holder, deleter = [await asyncpg.connect(fresh_db) for _ in range(3)]
    deleting: asyncio.Task[str] | None = None
    try:
        nid = await setup.fetchval("SELECT notifyd.notify('ana', 't', 'n', 'm')")
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT FROM notifyd.streams WHERE stream = 'user:ana' FOR UPDATE")
        deleting = asyncio.create_task(
            deleter.execute("DELETE FROM notifyd.notifications WHERE id = $1", nid)
        )
        pid = deleter.get_server_pid()
        async with asyncio.timeout(10):
            while not await setup.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
            ):
                await asyncio.sleep(0.02)
        async with setup.transaction():  # the DELETE has not written the tallies
            await setup.execute(
                "SELECT FROM notifyd.tallies WHERE stream = 'user:ana' FOR UPDATE NOWAIT"
            )
        await held.rollback()
        await deleting
        unread = "SELECT unread FROM notifyd.tallies WHERE stream = 'user:ana' AND category = ''"
        assert await setup.fetchval(unread) == 0  # and then it counted the item out
    finally:
        for conn in (setup, holder, deleter):
            await conn.close()
        if deleting is not None and not deleting.done():
            deleting.cancel()
        if deleting is not None:
            await asyncio.gather(deleting, return_exceptions=True)


async def test_writes_run_no_sql_function_planned_at_every_statement(fresh_db: str) -> None:
    """The triggers, constraints and counters behind a write call no SQL-language function
    that PostgreSQL runs as a function (not inlined): its body would be planned again at every
    statement, which once made an INSERT cost twice what it does. (PostgreSQL counts a
    function's calls, with track_functions = 'all', only when it runs as one.)"""
    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute("SET track_functions = 'all'")
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO notifyd.notifications (user_id, type, title, message, category, "
                "actions) VALUES ('ana', 't', 'n', 'm', 'billing', '[]'), "
                "('bo', 't', 'n', 'm', NULL, '[{\"id\": \"ok\", \"label\": \"OK\"}]')"
            )
            await conn.execute(
                "INSERT INTO notifyd.notifications (role, stream, type, title, message) "
                "VALUES (NULL, 'all', 't', 'n', 'm'), ('staff', 'role:staff', 't', 'n', 'm')"
            )
            shared = await conn.fetchval("SELECT max(id) FROM notifyd.notifications")
            await conn.execute(
                "UPDATE notifyd.notifications SET read_at = now() WHERE user_id = 'ana'"
            )
            await conn.execute("SELECT notifyd.mark_read('ana', ARRAY[$1::bigint])", shared)
            await conn.execute("DELETE FROM notifyd.notifications WHERE user_id = 'bo'")
            planned = await conn.fetch(
                "SELECT s.schemaname || '.' || s.funcname AS name "
                "FROM pg_stat_xact_user_functions s JOIN pg_proc p ON p.oid = s.funcid "
                "JOIN pg_language l ON l.oid = p.prolang "
                "WHERE l.lanname = 'sql' AND p.proname NOT IN ('mark_read')"
            )
        assert [r["name"] for r in planned] == []
    finally:
        await conn.close()


async def test_reads_asked_for_while_a_query_runs_share_the_next(fresh_db: str) -> None:
    """One state query at a time: the reads that arrive, turn after turn, while it runs (here
    it waits for the pool's only connection) all go into the next, one query for all."""
    queries: list[str] = []

    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda q: queries.append(q.query))

    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=1, init=log_queries)
    try:
        for i in range(10):
            await pool.execute("SELECT notifyd.notify($1, 't', 'n', 'm')", f"u{i}")
        store = Store(pool)
        queries.clear()
        held = await pool.acquire()
        first = asyncio.ensure_future(store.stream_states(["user:u0"]))
        later = []
        for i in range(1, 10):
            for _ in range(3):  # separate turns of the loop
                await asyncio.sleep(0)
            later.append(asyncio.ensure_future(store.stream_states([f"user:u{i}"])))
        await pool.release(held)
        answers = await asyncio.gather(first, *later)
        assert [a[f"user:u{i}"].last_seq for i, a in enumerate(answers)] == [1] * 10
        assert sum(STATE_QUERY in q for q in queries) == 2
        # with none running, a read is not held back
        queries.clear()
        assert (await store.stream_states(["user:u3"]))["user:u3"].last_seq == 1
        assert sum(STATE_QUERY in q for q in queries) == 1
    finally:
        await pool.close()


SYNC_STREAMS = ["user:a", "role:x", "all", "user:p", "user:none"]
in_flight_range = st.tuples(st.integers(0, 14), st.integers(-1, 14))


@pytest.fixture
async def sync_store(fresh_db: str) -> AsyncIterator[Store]:
    """12 notifications for a, 5 for role x, 3 for everyone, 10 for p of which retention
    removed the first 4, none for user `none` (no stream row at all)."""
    store = await Store.open(fresh_db)
    pool = store._pool
    for user, count in (("a", 12), ("p", 10)):
        await pool.execute(
            "SELECT notifyd.notify($1, 't', 'n' || k, 'm') FROM generate_series(1, $2) k",
            user,
            count,
        )
    await pool.execute("SELECT notifyd.broadcast('t', 'n' || k, 'm') FROM generate_series(1, 3) k")
    await pool.execute(
        "INSERT INTO notifyd.notifications (role, type, title) "
        "SELECT 'x', 't', 'n' || k FROM generate_series(1, 5) k"
    )
    await pool.execute("DELETE FROM notifyd.notifications WHERE stream = 'user:p' AND seq < 5")
    await pool.execute("UPDATE notifyd.streams SET pruned_below = 5 WHERE stream = 'user:p'")
    yield store
    await store.close()


@DATABASE_EXAMPLES
@given(
    cursors=st.dictionaries(st.sampled_from(SYNC_STREAMS), st.integers(0, 15), min_size=1),
    in_flight=st.dictionaries(st.sampled_from(SYNC_STREAMS), in_flight_range),
    limit=st.integers(1, 6),
    max_bytes=st.integers(1, 3000) | st.just(2**20),
)
async def test_a_sync_with_every_cursor_is_answered_as_the_transaction_answers_it(
    sync_store: Store,
    cursors: dict[str, int],
    in_flight: dict[str, tuple[int, int]],
    limit: int,
    max_bytes: int,
) -> None:
    one_statement = await sync_store._sync_after_cursors(
        cursors, limit, max_bytes, in_flight, "user:a"
    )
    general = await sync_store._sync_in_transaction(
        cursors, [], None, limit, max_bytes, in_flight, "user:a"
    )
    if one_statement is None:  # a stream to reset: left to the transaction
        assert general.reset
        return
    assert not general.reset
    assert orjson.dumps(one_statement.notifications) == orjson.dumps(general.notifications)
    assert one_statement.cursors == general.cursors
    assert one_statement.has_more == general.has_more
    # within the byte budget, but for a first row larger than it, given alone
    size = sum(len(orjson.dumps(n)) for n in general.notifications)
    assert size <= max_bytes or len(general.notifications) == 1
    # and sync() itself takes the one statement
    assert orjson.dumps(
        (
            await sync_store.sync(
                cursors, [], None, limit, in_flight, max_bytes=max_bytes, viewer="user:a"
            )
        ).notifications
    ) == orjson.dumps(general.notifications)


def test_migration_files_are_numbered() -> None:
    found = migrations()
    assert [v for v, _, _ in found] == list(range(1, len(found) + 1))


async def test_catch_up_reads_new_changed_and_deleted_items_as_their_events(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a node missed above a seq: rows delivered after it as new, rows delivered before it
    and changed since as updated (at their new seq), tombstones as deleted; in seq order, in
    pages that lose nothing."""
    monkeypatch.setattr(store_module, "CATCH_UP_PAGE", 2)
    store = await Store.open(fresh_db)
    try:
        ids = [await store.insert_demo("u1", f"n{i}", "m", "low") for i in range(4)]  # seq 1-4
        await store.set_state("u1", "read", True, (ids[0],), None, ["user:u1"])  # seq 5
        await store._pool.execute("DELETE FROM notifyd.notifications WHERE id = $1", ids[1])  # 6
        await store.insert_demo("u1", "n4", "m", "low")  # seq 7
        events = await store.catch_up({"user:u1": 2, "all": 0})
        assert [(type(e).__name__, e.seq, getattr(e, "id", None)) for e in events] == [
            ("New", 3, ids[2]),
            ("New", 4, ids[3]),
            ("Updated", 5, ids[0]),
            ("Deleted", 6, ids[1]),
            ("New", 7, ids[3] + 1),
        ]
        updated = events[2]
        assert isinstance(updated, Updated) and updated.notification is not None
        assert orjson.loads(orjson.dumps(updated.notification))["read"] is True
    finally:
        await store.close()


async def test_catch_up_reads_a_users_receipts_and_marks_in_their_stream(fresh_db: str) -> None:
    """A user's state of a shared item and their marks are changes of the user's own stream:
    catch-up reads them there (the item as the user sees it, the mark), in seq order."""
    store = await Store.open(fresh_db)
    try:
        shared = await store._pool.fetchval("SELECT notifyd.broadcast('t', 'news', 'm')")
        await store.insert_demo("u1", "own", "m", "low")  # user:u1 seq 1
        await store.set_state("u1", "read", True, (shared,), None, ["user:u1", "all"])  # 2
        await store.set_state("u1", "archived", True, None, None, ["user:u1", "all"])  # 3, 4
        events = await store.catch_up({"user:u1": 1})
        assert [(type(e).__name__, e.seq) for e in events] == [
            ("Updated", 2),
            ("Marked", 3),
            ("Marked", 4),
        ]
        receipt, own_mark, shared_mark = events
        assert isinstance(receipt, Updated) and receipt.viewer == "user:u1"
        assert receipt.item_stream == "all" and receipt.id == shared
        assert orjson.loads(orjson.dumps(receipt.notification))["read"] is True
        assert isinstance(own_mark, Marked) and isinstance(shared_mark, Marked)
        assert (own_mark.state, own_mark.target, shared_mark.target) == (
            "archived",
            "user:u1",
            "all",
        )
    finally:
        await store.close()
