"""Convergence (protocol/README.md §6, "Everything is replayed"): random changes by several
devices and by SQL, and random disconnects, and at every quiescent point each device's copy,
kept by the rules of the protocol (upsert by id, drop removed ids and deleted items, drop a
reset stream), is exactly what a fresh load gives: the items and states the table holds.

The devices are the Python client (notifyd.client), over real WebSockets to one in-process
daemon; the fresh load is read from the table with notifyd.to_wire(), the function that makes
every frame. Each example is a user of its own, so examples share the daemon and not state.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import orjson
import pytest
from faults_support import eventually
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from support import Daemon

from notifyd.client import NotifydClient

DEVICES = 3
USERS = itertools.count(1)


class Device:
    """A client and its copy of the user's items, kept as protocol/README.md §7 says."""

    def __init__(self, daemon: Daemon, user: str) -> None:
        self.daemon, self.user = daemon, user
        self.items: dict[int, dict[str, Any]] = {}
        self.online = False
        self.start({})

    def start(self, cursors: dict[str, int]) -> None:
        """Online, from the stored cursors (and the copy kept while offline)."""
        self.client = NotifydClient(
            self.daemon.url, self.daemon.token(self.user), cursors, backoff_base=0.05, quick=0.05
        )
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.online = True

    async def _run(self) -> None:
        async for event in self.client.events():
            data = event.data
            if event.kind in ("notification", "updated"):
                held = self.items.get(data["id"])
                if held is None or held["seq"] <= data["seq"]:
                    self.items[data["id"]] = data
            elif event.kind == "deleted":
                self.items.pop(data["id"], None)
            elif event.kind == "reset":
                self.items = {i: n for i, n in self.items.items() if n["stream"] != data["stream"]}

    def caught_up(self, last_seq: int, stream: str) -> bool:
        return self.client.synced and self.client.cursors.get(stream, 0) >= last_seq

    async def stop(self) -> None:
        """Offline (the app closed): the copy and the cursors stay."""
        if self.online:
            self.online = False
            # stopped once connected and synced: a client stopped halfway through its
            # handshake would leave its socket to the garbage collector
            await eventually(lambda: self.client.synced, 20, "the device synced")
            await self.client.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


ops = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 3)),
    st.tuples(st.just("insert"), st.integers(1, 3)),
    st.tuples(st.just("device-read"), st.integers(0, DEVICES - 1), st.integers(0, 20)),
    st.tuples(st.just("device-read-all"), st.integers(0, DEVICES - 1)),
    st.tuples(st.just("sql-read"), st.integers(0, 20)),
    st.tuples(st.just("sql-unread"), st.integers(0, 20)),
    st.tuples(st.just("sql-edit"), st.integers(0, 20)),
    st.tuples(st.just("sql-noop"), st.integers(0, 20)),
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("disconnect"), st.integers(0, DEVICES - 1), st.booleans()),
    st.tuples(st.just("offline"), st.integers(0, DEVICES - 1)),
    st.just(("quiesce",)),
)


@pytest.mark.timeout(300)
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(ops, min_size=5, max_size=30))
# what a device missed while offline: deletions, read marks by another device and by SQL, an
# unread mark, an edit, a read-all, each replayed at its next connect
@example(
    steps=[
        ("insert", 3),
        ("offline", 0),
        ("delete", 0),
        ("device-read", 1, 1),
        ("sql-unread", 1),
        ("sql-edit", 0),
        ("insert", 2),
        ("quiesce",),
        ("offline", 2),
        ("device-read-all", 0),
        ("delete", 2),
        ("disconnect", 1, True),
        ("sql-read", 0),
    ]
)
async def test_every_device_converges_to_a_fresh_load(daemon: Daemon, steps: list[Any]) -> None:
    user = f"conv{next(USERS)}"
    stream = f"user:{user}"
    pool = await daemon.pool()
    devices = [Device(daemon, user) for _ in range(DEVICES)]

    async def ids() -> list[int]:
        rows = await pool.fetch(
            "SELECT id FROM notifyd.notifications WHERE stream = $1 ORDER BY id", stream
        )
        return [r["id"] for r in rows]

    async def pick(i: int) -> int | None:
        have = await ids()
        return have[i % len(have)] if have else None

    async def quiesce() -> None:
        for device in devices:
            if not device.online:
                device.start(device.client.cursors)
        fresh = {
            r["id"]: orjson.loads(r["wire"])
            for r in await pool.fetch(
                "SELECT n.id, notifyd.to_wire(n)::text AS wire FROM notifyd.notifications n "
                "WHERE n.stream = $1",
                stream,
            )
        }
        last = await pool.fetchval("SELECT last_seq FROM notifyd.streams WHERE stream = $1", stream)
        await eventually(
            lambda: all(d.caught_up(last or 0, stream) for d in devices), 20, "devices caught up"
        )
        # The client's cursor moves when a frame is read; the copy, when the app's loop has
        # taken the events that frame queued: a few turns of the event loop later.
        with contextlib.suppress(AssertionError):
            await eventually(lambda: all(d.items == fresh for d in devices), 5, "copies applied")
        for n, device in enumerate(devices):
            assert device.items == fresh, f"device {n} differs from a fresh load"

    try:
        await eventually(lambda: all(d.client.synced for d in devices), 20, "devices synced")
        for step in steps:
            kind = step[0]
            if kind == "insert":
                await pool.execute(
                    "INSERT INTO notifyd.notifications (user_id, type, title) "
                    "SELECT $1, 't', 'n' || g FROM generate_series(1, $2) g",
                    user,
                    step[1],
                )
            elif kind == "device-read":
                nid = await pick(step[2])
                client = devices[step[1]].client
                if nid is not None and client.connected and devices[step[1]].online:
                    with contextlib.suppress(Exception):  # a device disconnecting meanwhile
                        await client.mark_read([nid])
            elif kind == "device-read-all":
                client = devices[step[1]].client
                if client.connected and devices[step[1]].online:
                    with contextlib.suppress(Exception):
                        await client.mark_all_read()
            elif kind in ("sql-read", "sql-unread", "sql-edit", "sql-noop", "delete"):
                nid = await pick(step[1])
                if nid is None:
                    continue
                statement = {
                    "sql-read": "UPDATE notifyd.notifications SET read_at = now() WHERE id = $1",
                    "sql-unread": "UPDATE notifyd.notifications SET read_at = NULL WHERE id = $1",
                    "sql-edit": "UPDATE notifyd.notifications SET title = title || '!', "
                    "data = jsonb_build_object('v', random()) WHERE id = $1",
                    "sql-noop": "UPDATE notifyd.notifications SET title = title WHERE id = $1",
                    "delete": "DELETE FROM notifyd.notifications WHERE id = $1",
                }[kind]
                await pool.execute(statement, nid)
            elif kind == "disconnect":  # a network loss or close: it reconnects and syncs
                await devices[step[1]].client.disconnect(abrupt=step[2])
            elif kind == "offline":  # until the next quiescent point
                await devices[step[1]].stop()
            else:
                await quiesce()
        await quiesce()
        unread = await pool.fetchval(
            "SELECT count(*) FROM notifyd.notifications WHERE stream = $1 AND read_at IS NULL",
            stream,
        )
        await eventually(
            lambda: all(d.client.unread_count == unread for d in devices), 10, "unread counts"
        )
    finally:
        for device in devices:
            await device.stop()


async def test_an_id_deleted_and_given_again_while_away_ends_as_the_new_item(
    daemon: Daemon,
) -> None:
    """An app may give a deleted item's id to a new row (INSERT ... OVERRIDING SYSTEM VALUE):
    the next sync then has the id in `removed` and in `notifications`, and a client that drops
    the removed ids first, as §6 says, keeps the new item."""
    user, pool = "reused", await daemon.pool()
    device = Device(daemon, user)
    try:
        nid = await daemon.notify(user, "first")
        await eventually(lambda: nid in device.items, 10, "the first item")
        await device.stop()
        await pool.execute("DELETE FROM notifyd.notifications WHERE id = $1", nid)
        await pool.execute(
            "INSERT INTO notifyd.notifications (id, user_id, type, title) "
            "OVERRIDING SYSTEM VALUE VALUES ($1, $2, 't', 'again')",
            nid,
            user,
        )
        device.start(device.client.cursors)
        await eventually(lambda: device.caught_up(3, f"user:{user}"), 10, "caught up")
        await eventually(lambda: device.items.get(nid, {}).get("title") == "again", 5, "kept")
        assert list(device.items) == [nid]
    finally:
        await device.stop()
