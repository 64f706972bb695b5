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

from notifyd.client import NotifydClient, apply_mark

DEVICES = 3
USERS = itertools.count(1)


class Device:
    """A client and its copy of the user's items, kept as protocol/README.md §7 says."""

    def __init__(self, daemon: Daemon, user: str, role: str) -> None:
        self.daemon, self.user, self.role = daemon, user, role
        self.items: dict[int, dict[str, Any]] = {}
        self.online = False
        self.start({})

    def start(self, cursors: dict[str, int]) -> None:
        """Online, from the stored cursors (and the copy kept while offline)."""
        self.client = NotifydClient(
            self.daemon.url,
            self.daemon.token(self.user, [self.role]),
            cursors,
            backoff_base=0.05,
            quick=0.05,
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
            elif event.kind == "marked":
                apply_mark(self.items, data)
            elif event.kind == "reset":
                self.items = {i: n for i, n in self.items.items() if n["stream"] != data["stream"]}

    def caught_up(self, last: dict[str, int]) -> bool:
        return self.client.synced and all(
            self.client.cursors.get(stream, 0) >= seq for stream, seq in last.items()
        )

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


CATEGORIES = st.sampled_from([None, "billing"])
STATE_OPS = ["mark-seen", "mark-read", "mark-unread", "archive", "unarchive"]
SQL_STATES = ["mark_seen", "mark_read", "mark_unread", "archive", "unarchive"]
ops = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 3), CATEGORIES),
    st.tuples(st.just("insert"), st.integers(1, 3), CATEGORIES),
    st.tuples(st.just("role-insert"), st.integers(1, 2), CATEGORIES),
    st.tuples(
        st.just("device-op"),
        st.integers(0, DEVICES - 1),
        st.sampled_from(STATE_OPS),
        st.integers(0, 20),
    ),
    st.tuples(
        st.just("device-all"), st.integers(0, DEVICES - 1), st.sampled_from(STATE_OPS), CATEGORIES
    ),
    st.tuples(st.just("sql-state"), st.sampled_from(SQL_STATES), st.integers(0, 20)),
    st.tuples(st.just("sql-all"), st.sampled_from(SQL_STATES), CATEGORIES),
    st.tuples(st.just("device-read"), st.integers(0, DEVICES - 1), st.integers(0, 20)),
    st.tuples(st.just("device-read-all"), st.integers(0, DEVICES - 1)),
    st.tuples(st.just("sql-read"), st.integers(0, 20)),
    st.tuples(st.just("sql-unread"), st.integers(0, 20)),
    st.tuples(st.just("sql-edit"), st.integers(0, 20)),
    st.tuples(st.just("sql-noop"), st.integers(0, 20)),
    st.tuples(st.just("sql-recategorize"), st.integers(0, 20)),
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("group-insert"), st.integers(1, 2), st.integers(1, 3)),
    st.tuples(st.just("schedule"), st.integers(1, 2)),
    st.just(("deliver",)),
    st.tuples(st.just("expire"), st.integers(0, 20)),
    st.tuples(st.just("disconnect"), st.integers(0, DEVICES - 1), st.booleans()),
    st.tuples(st.just("offline"), st.integers(0, DEVICES - 1)),
    st.just(("quiesce",)),
)


def recount(items: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The notification:unread-count a fresh load gives, counted from scratch."""
    counts: dict[str, Any] = {"count": 0, "unseen": 0, "categories": {}}
    for n in items.values():
        if n["archived"] or n["snoozedUntil"] is not None:
            continue
        unread, unseen = int(not n["read"]), int(not n["seen"])
        counts["count"] += unread
        counts["unseen"] += unseen
        if n["category"] is not None and (unread or unseen):
            per = counts["categories"].setdefault(n["category"], {"unread": 0, "unseen": 0})
            per["unread"] += unread
            per["unseen"] += unseen
    return counts


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
        ("insert", 3, None),
        ("offline", 0),
        ("delete", 0),
        ("device-read", 1, 1),
        ("sql-unread", 1),
        ("sql-edit", 0),
        ("insert", 2, "billing"),
        ("quiesce",),
        ("offline", 2),
        ("device-read-all", 0),
        ("delete", 2),
        ("disconnect", 1, True),
        ("sql-read", 0),
    ]
)
# shared items: read, archived and marked by this user alone, while a device is away
@example(
    steps=[
        ("role-insert", 2, "billing"),
        ("insert", 1, None),
        ("offline", 1),
        ("device-op", 0, "mark-read", 0),
        ("device-all", 2, "archive", "billing"),
        ("device-op", 0, "unarchive", 1),
        ("sql-all", "mark_seen", None),
        ("sql-recategorize", 0),
        ("role-insert", 1, None),
        ("device-all", 0, "mark-unread", None),
        ("sql-edit", 1),
    ]
)
# groups, scheduled items and expiry, by SQL and the daemon, while a device is away
@example(
    steps=[
        ("group-insert", 1, 1),
        ("offline", 0),
        ("group-insert", 1, 2),
        ("schedule", 1),
        ("schedule", 2),
        ("device-op", 1, "mark-seen", 0),
        ("group-insert", 1, 3),
        ("quiesce",),
        ("offline", 2),
        ("deliver",),
        ("expire", 0),
        ("group-insert", 2, 1),
        ("device-read-all", 1),
        ("group-insert", 2, 2),
    ]
)
async def test_every_device_converges_to_a_fresh_load(daemon: Daemon, steps: list[Any]) -> None:
    n = next(USERS)
    user, role = f"conv{n}", f"convr{n}"
    stream, shared = f"user:{user}", f"role:{role}"
    streams = [stream, shared, "all"]
    pool = await daemon.pool()
    devices = [Device(daemon, user, role) for _ in range(DEVICES)]

    async def ids(of: list[str]) -> list[int]:
        rows = await pool.fetch(
            "SELECT id FROM notifyd.notifications WHERE stream = ANY($1) ORDER BY id", of
        )
        return [r["id"] for r in rows]

    async def pick(i: int, of: list[str] = streams) -> int | None:
        have = await ids(of)
        return have[i % len(have)] if have else None

    async def fresh_load() -> dict[int, dict[str, Any]]:
        return {
            r["id"]: orjson.loads(r["wire"])
            for r in await pool.fetch(
                "SELECT n.id, notifyd.to_wire(n, $2)::text AS wire FROM notifyd.notifications n "
                "WHERE n.stream = ANY($1) AND n.seq IS NOT NULL",
                streams,
                stream,
            )
        }

    async def quiesce() -> None:
        for device in devices:
            if not device.online:
                device.start(device.client.cursors)
        fresh = await fresh_load()
        last = {
            r["stream"]: r["last_seq"]
            for r in await pool.fetch(
                "SELECT stream, last_seq FROM notifyd.streams WHERE stream = ANY($1)", streams
            )
        }
        await eventually(lambda: all(d.caught_up(last) for d in devices), 20, "devices caught up")
        # The client's cursor moves when a frame is read; the copy, when the app's loop has
        # taken the events that frame queued: a few turns of the event loop later.
        with contextlib.suppress(AssertionError):
            await eventually(lambda: all(d.items == fresh for d in devices), 5, "copies applied")
        for k, device in enumerate(devices):
            differs = {
                i: {
                    f: (device.items.get(i, {}).get(f), n.get(f))
                    for f in n
                    if device.items.get(i, {}).get(f) != n.get(f)
                }
                for i, n in fresh.items()
                if device.items.get(i) != n
            }
            extra = set(device.items) - set(fresh)
            assert device.items == fresh, f"device {k} differs from a fresh load: {differs} {extra}"
        # and the counts are those of a recount from scratch of what it shows
        expected = recount(fresh)
        with contextlib.suppress(AssertionError):
            await eventually(
                lambda: all(d.client.counts == expected for d in devices), 5, "counts applied"
            )
        for k, device in enumerate(devices):
            assert device.client.counts == expected, f"device {k}'s counts"

    try:
        await eventually(lambda: all(d.client.synced for d in devices), 20, "devices synced")
        for step in steps:
            kind = step[0]
            if kind in ("insert", "role-insert"):
                await pool.execute(
                    "INSERT INTO notifyd.notifications (user_id, role, type, title, category) "
                    "SELECT $1, $2, 't', 'n' || g, $4 FROM generate_series(1, $3) g",
                    user if kind == "insert" else None,
                    role if kind == "role-insert" else None,
                    step[1],
                    step[2],
                )
            elif kind in ("device-op", "device-all"):
                device = devices[step[1]]
                target = await pick(step[3]) if kind == "device-op" else None
                if device.client.connected and device.online:
                    if kind == "device-op" and target is None:
                        continue
                    with contextlib.suppress(Exception):  # a device disconnecting meanwhile
                        await device.client.change(
                            step[2],
                            [target] if target is not None else None,
                            step[3] if kind == "device-all" else None,
                        )
            elif kind in ("sql-state", "sql-all"):
                target = await pick(step[2]) if kind == "sql-state" else None
                if kind == "sql-state" and target is None:
                    continue
                await pool.execute(
                    f"SELECT notifyd.{step[1]}($1, $2::bigint[], $3, $4::text[])",
                    user,
                    [target] if target is not None else None,
                    step[2] if kind == "sql-all" else None,
                    streams,
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
            elif kind in (
                "sql-read",
                "sql-unread",
                "sql-edit",
                "sql-noop",
                "sql-recategorize",
                "delete",
            ):
                # a shared row has no state of its own (each user's is theirs): the plain
                # UPDATE of read_at is for a user's own items
                own_only = kind in ("sql-read", "sql-unread")
                nid = await pick(step[1], [stream] if own_only else streams)
                if nid is None:
                    continue
                statement = {
                    "sql-read": "UPDATE notifyd.notifications SET read_at = now() WHERE id = $1",
                    "sql-unread": "UPDATE notifyd.notifications SET read_at = NULL WHERE id = $1",
                    "sql-edit": "UPDATE notifyd.notifications SET title = title || '!', "
                    "data = jsonb_build_object('v', random()) WHERE id = $1",
                    "sql-noop": "UPDATE notifyd.notifications SET title = title WHERE id = $1",
                    "sql-recategorize": "UPDATE notifyd.notifications SET category = CASE "
                    "WHEN category IS NULL THEN 'billing' END WHERE id = $1",
                    "delete": "DELETE FROM notifyd.notifications WHERE id = $1",
                }[kind]
                await pool.execute(statement, nid)
            elif kind == "group-insert":  # collapses into the group's unread item, if any
                await pool.execute(
                    "SELECT notifyd.notify($1, 't', 'g', 'm', group_key => $2, actor => $3)",
                    user,
                    f"g{step[1]}",
                    f"actor{step[2]}",
                )
            elif kind == "schedule":  # pending until "deliver"
                await pool.execute(
                    "INSERT INTO notifyd.notifications (user_id, role, type, title, deliver_at) "
                    "VALUES ($1, $2, 't', 'later', now() + interval '1 hour')",
                    user if step[1] == 1 else None,
                    role if step[1] == 2 else None,
                )
            elif kind == "deliver":  # what notifyd.deliver() does to what is due
                await pool.execute(
                    "UPDATE notifyd.notifications SET deliver_at = now() "
                    "WHERE stream = ANY($1) AND seq IS NULL",
                    streams,
                )
            elif kind == "expire":
                nid = await pick(step[1])
                if nid is None:
                    continue
                await pool.execute(
                    "UPDATE notifyd.notifications SET expires_at = now() WHERE id = $1 "
                    "AND deliver_at IS NULL",
                    nid,
                )
                await pool.execute("SELECT notifyd.expire()")
                # (the daemon's own run may have taken it first: until its commit)
                for _ in range(500):
                    if not await pool.fetchval(
                        "SELECT EXISTS (SELECT FROM notifyd.notifications WHERE id = $1)", nid
                    ):
                        break
                    await asyncio.sleep(0.01)
            elif kind == "disconnect":  # a network loss or close: it reconnects and syncs
                await devices[step[1]].client.disconnect(abrupt=step[2])
            elif kind == "offline":  # until the next quiescent point
                await devices[step[1]].stop()
            else:
                await quiesce()
        await quiesce()
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
    device = Device(daemon, user, "reused")
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
        await eventually(lambda: device.caught_up({f"user:{user}": 3}), 10, "caught up")
        await eventually(lambda: device.items.get(nid, {}).get("title") == "again", 5, "kept")
        assert list(device.items) == [nid]
    finally:
        await device.stop()
