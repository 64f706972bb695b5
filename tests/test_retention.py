# Retention: notifyd.prune() removes old notifications in small batches, never announces them
# as deleted, keeps unread counts right, makes sync answer `reset` for cursors below what is
# kept, gives way to app transactions instead of making them wait; and the daemon's own
# retention run (NOTIFYD_RETENTION_DAYS) does it by itself.
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
from faults_support import ServeProcess, eventually, http_get
from support import Daemon, free_port, running_daemon

from notifyd.core.errors import PruneBusy

OLD = "now() - interval '40 days'"


async def _insert(pool: asyncpg.Pool, user: str, count: int, created: str = "now()") -> None:
    await pool.execute(
        "INSERT INTO notifyd.notifications (user_id, type, title, created_at) "
        f"SELECT $1, 'test', 'n' || i, {created} FROM generate_series(1, $2) i",
        user,
        count,
    )


async def _quiet_retention(d: Daemon, days: float) -> None:
    """The test drives pruning itself: stop the background run, then set the window."""
    assert d.app._pruning is not None
    d.app._pruning.cancel()
    d.app.settings = d.app.settings.replace(retention_days=days)


async def test_prune_in_batches_keeps_counts_and_syncs_reset_old_cursors(fresh_db: str) -> None:
    async with running_daemon(fresh_db) as d:
        await _quiet_retention(d, 30)
        pool = await d.pool()
        await _insert(pool, "r1", 7, OLD)  # seq 1-7: old
        await _insert(pool, "r1", 2)  # seq 8-9: recent
        # items 1 and 2 read: their versions are seq 10 and 11
        await pool.execute("UPDATE notifyd.notifications SET read_at = now() WHERE seq <= 2")
        await pool.execute("SELECT notifyd.broadcast('system', 'old', 'm')")
        await pool.execute(
            f"UPDATE notifyd.notifications SET created_at = {OLD} WHERE stream = 'all'"
        )
        client = await d.connect("r1")

        assert await d.app.retention.prune(batch=3) == 8  # 7 of r1 and 1 of `all`: batches 3, 3, 2
        frames = await client.quiet(0.5)
        # Old items are not announced as deleted; the unread count follows (7 unread of 9,
        # 5 of them pruned: 2 left).
        assert {f["type"] for f in frames} == {"notification:unread-count"}
        assert frames[-1]["data"]["count"] == 2
        assert await d.sql("SELECT sum(unread) FROM notifyd.tallies WHERE stream = 'user:r1'") == 2
        # every version pruned is below what is kept: the read items' 10 and 11 too
        floor = "SELECT pruned_below FROM notifyd.streams WHERE stream = 'user:r1'"
        assert await d.sql(floor) == 12
        assert await d.sql("SELECT count(*) FROM notifyd.notifications") == 2

        # A cursor below what is kept: the stream is reset and its latest items come.
        stale = await client.sync({"user:r1": 3, "all": 0})
        assert sorted(stale["reset"]) == ["all", "user:r1"]
        assert [n["seq"] for n in stale["notifications"]] == [8, 9]
        # A cursor below a pruned version may hold that item in an older state, which nothing
        # would remove: reset. A cursor at the last pruned version needs nothing that is gone.
        assert (await client.sync({"user:r1": 9}))["reset"] == ["user:r1"]
        current = await client.sync({"user:r1": 11})
        assert current["reset"] == [] and current["notifications"] == []
        _, body = await http_get(d.app.port, "/metrics")
        assert b"notifyd_pruned_notifications_total 8.0" in body

        assert await d.app.retention.prune() == 0  # nothing left to do


async def test_prune_gives_way_to_an_app_transaction(fresh_db: str) -> None:
    async with running_daemon(fresh_db) as d:
        await _quiet_retention(d, 30)
        pool = await d.pool()
        await _insert(pool, "r2", 3, OLD)
        app_conn = await asyncpg.connect(fresh_db)
        try:
            # An app transaction holds the stream's counter row (an insert, not committed).
            tx = app_conn.transaction()
            await tx.start()
            await app_conn.execute("SELECT notifyd.notify('r2', 't', 'in flight', 'm')")
            started = time.monotonic()
            with pytest.raises(PruneBusy):  # gave up within its 200 ms lock timeout
                await d.app.store.prune(30, 100)
            assert time.monotonic() - started < 2
            # The daemon's run retries: it succeeds once the app's transaction commits.
            retrying = asyncio.ensure_future(d.app.retention.prune())
            await asyncio.sleep(0.8)
            assert not retrying.done()
            await tx.commit()  # the app's transaction was never the victim
            assert await retrying == 3
        finally:
            await app_conn.close()
        assert await d.sql("SELECT array_agg(seq) FROM notifyd.notifications") == [4]


async def test_prune_leaves_the_callers_settings_alone(daemon: Daemon) -> None:
    """Called from cron inside a transaction of the caller's: its lock_timeout stays, and the
    pruning flag does not leak to the caller's own deletes."""
    pool = await daemon.pool()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '5s'")
        assert await conn.fetchval("SELECT notifyd.prune(interval '1 day', 10)") == 0
        assert await conn.fetchval("SHOW lock_timeout") == "5s"
        assert await conn.fetchval("SELECT current_setting('notifyd.pruning', true)") in (None, "")


async def test_prune_refuses_bad_arguments(daemon: Daemon) -> None:
    pool = await daemon.pool()
    for args in ("interval '-1 day', 10", "interval '1 day', 0", "NULL, 10"):
        with pytest.raises(asyncpg.InvalidParameterValueError, match="non-negative interval"):
            await pool.execute(f"SELECT notifyd.prune({args})")


async def test_app_deletes_are_still_announced(daemon: Daemon) -> None:
    """Only pruning is silent: an app's DELETE reaches the user's devices as before."""
    client = await daemon.connect("r3")
    nid = await daemon.notify("r3")
    await client.expect("notification:new")
    await daemon.sql("DELETE FROM notifyd.notifications WHERE id = $1", nid)
    assert (await client.next_data("notification:deleted"))["id"] == nid


async def test_the_daemon_prunes_by_itself(fresh_db: str, tmp_path: Path) -> None:
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    try:
        await _insert(pool, "r4", 5, OLD)
        await _insert(pool, "r4", 1)
        node = ServeProcess(fresh_db, free_port(), tmp_path, NOTIFYD_RETENTION_DAYS="30")
        try:
            await node.start()
            await eventually(
                lambda: "pruned 5 notifications older than 30 days" in node.log_path.read_text(),
                30,
                "the retention run",
            )
        finally:
            node.stop()
        assert await pool.fetchval("SELECT count(*) FROM notifyd.notifications") == 1
    finally:
        await pool.close()
