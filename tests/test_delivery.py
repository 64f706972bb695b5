# Delivery end to end on one node, real PostgreSQL and real WebSocket clients: triggers of an
# app's own table, several devices, rollbacks, offline replay, concurrent writers, syncing
# while writers insert, announcements, large rows, read and delete events.
from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import asyncpg
from support import Client, Daemon, running_daemon


async def collect_new(client: Client, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        out.append((await client.next_data("notification:new", timeout))["notification"])
    return out


async def test_app_trigger_delivers_to_both_doctor_devices(daemon: Daemon) -> None:
    pool = await daemon.pool()
    await pool.execute("""
        CREATE TABLE appointments (id serial PRIMARY KEY, doctor_id text, patient_id text,
                                   starts_at timestamptz);
        CREATE FUNCTION appointment_created() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM notifyd.notify(NEW.doctor_id, 'appointment:created', 'New appointment',
                                   'with patient ' || NEW.patient_id,
                                   jsonb_build_object('appointmentId', NEW.id), 'high',
                                   '/appointments/' || NEW.id);
            PERFORM notifyd.notify(NEW.patient_id, 'appointment:created', 'Appointment booked',
                                   'with doctor ' || NEW.doctor_id,
                                   jsonb_build_object('appointmentId', NEW.id));
            RETURN NEW;
        END $$;
        CREATE TRIGGER appointments_notify AFTER INSERT ON appointments
            FOR EACH ROW EXECUTE FUNCTION appointment_created();
    """)
    phone = await daemon.connect("doc-7", ["doctor"])
    laptop = await daemon.connect("doc-7", ["doctor"])
    patient = await daemon.connect("pat-9", ["patient"])
    appt = await pool.fetchval(
        "INSERT INTO appointments (doctor_id, patient_id, starts_at) "
        "VALUES ('doc-7', 'pat-9', now() + interval '1 day') RETURNING id"
    )
    for device in (phone, laptop):
        n = (await device.next_data("notification:new"))["notification"]
        assert n["stream"] == "user:doc-7" and n["seq"] == 1
        assert n["data"] == {"appointmentId": appt}
        assert n["priority"] == "high" and n["actionUrl"] == f"/appointments/{appt}"
        assert (await device.next_data("notification:unread-count"))["count"] == 1
    n = (await patient.next_data("notification:new"))["notification"]
    assert n["stream"] == "user:pat-9" and n["title"] == "Appointment booked"
    # nobody got the other's notification
    for device in (phone, laptop, patient):
        assert not [f for f in await device.quiet(0.2) if f["type"] == "notification:new"]


async def test_rolled_back_insert_is_never_delivered_and_leaves_no_gap(daemon: Daemon) -> None:
    client = await daemon.connect("u1")
    pool = await daemon.pool()
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT notifyd.notify('u1', 'x', 'rolled back', 'm')")
        await tx.rollback()
    await daemon.notify("u1", "kept")
    n = (await client.next_data("notification:new"))["notification"]
    assert n["title"] == "kept" and n["seq"] == 1
    assert not [f for f in await client.quiet(0.3) if f["type"] == "notification:new"]
    assert await daemon.sql("SELECT count(*) FROM notifyd.notifications") == 1


async def test_missed_items_replayed_once_in_order_then_live_without_gap(daemon: Daemon) -> None:
    first = await daemon.connect("u2")
    for i in range(3):
        await daemon.notify("u2", f"n{i}")
    got = await collect_new(first, 3)
    cursor = got[-1]["seq"]
    await first.close()
    for i in range(3, 8):  # offline
        await daemon.notify("u2", f"n{i}")
    again = await daemon.connect("u2")
    result = await again.sync({"user:u2": cursor})
    assert [n["seq"] for n in result["notifications"]] == [4, 5, 6, 7, 8]
    assert [n["title"] for n in result["notifications"]] == [f"n{i}" for i in range(3, 8)]
    assert result["cursors"]["user:u2"] == 8 and result["hasMore"] is False
    assert result["reset"] == []
    for i in range(8, 11):
        await daemon.notify("u2", f"n{i}")
    live = await collect_new(again, 3)
    assert [n["seq"] for n in live] == [9, 10, 11]
    assert not [f for f in await again.quiet(0.3) if f["type"] == "notification:new"]


async def test_sync_pages_with_has_more(daemon: Daemon) -> None:
    for i in range(5):
        await daemon.notify("u3", f"n{i}")
    client = await daemon.connect("u3")
    page = await client.sync({"user:u3": 0}, limit=2)
    assert [n["seq"] for n in page["notifications"]] == [1, 2] and page["hasMore"] is True
    await daemon.notify("u3", "live while behind")  # held back: the client is behind
    page = await client.sync(page["cursors"], limit=2)
    assert [n["seq"] for n in page["notifications"]] == [3, 4] and page["hasMore"] is True
    page = await client.sync(page["cursors"], limit=10)
    assert [n["seq"] for n in page["notifications"]] == [5, 6] and page["hasMore"] is False
    await daemon.notify("u3", "live")
    assert (await client.next_data("notification:new"))["notification"]["seq"] == 7
    news = [f for f in client.seen if f["type"] == "notification:new"]
    assert [f["data"]["notification"]["seq"] for f in news] == [7]


async def test_sync_without_cursor_replays_latest_and_since(daemon: Daemon) -> None:
    for i in range(4):
        await daemon.notify("u4", f"n{i}")
    client = await daemon.connect("u4")
    latest = await client.sync({}, limit=2)
    assert [n["seq"] for n in latest["notifications"]] == [3, 4]
    assert latest["cursors"] == {"user:u4": 4, "all": 0}
    middle = await daemon.sql("SELECT created_at FROM notifyd.notifications WHERE seq = 2")
    since = await client.sync({}, since=middle.isoformat())
    assert [n["seq"] for n in since["notifications"]] == [3, 4]
    # a cursor wins over `since` for its stream; asked again explicitly, items are given again
    again = await client.sync({"user:u4": 0}, since=middle.isoformat())
    assert [n["seq"] for n in again["notifications"]] == [1, 2, 3, 4]
    assert again["cursors"]["user:u4"] == 4


async def test_sync_reset_when_cursor_is_ahead_of_the_stream(daemon: Daemon) -> None:
    await daemon.notify("u5", "only")
    client = await daemon.connect("u5")
    result = await client.sync({"user:u5": 99})
    assert result["reset"] == ["user:u5"]
    assert [n["seq"] for n in result["notifications"]] == [1]
    assert result["cursors"]["user:u5"] == 1


async def test_eight_concurrent_writers_give_contiguous_seqs_in_order(daemon: Daemon) -> None:
    client = await daemon.connect("hot")
    pool = await daemon.pool()
    per_writer = 25

    async def writer(w: int) -> None:
        async with pool.acquire() as conn:
            for i in range(per_writer):
                await conn.execute("SELECT notifyd.notify('hot', 'w', $1, 'm')", f"{w}:{i}")

    await asyncio.gather(*(writer(w) for w in range(8)))
    got = await collect_new(client, 8 * per_writer)
    assert [n["seq"] for n in got] == list(range(1, 8 * per_writer + 1))
    # each writer's own items keep their order too
    for w in range(8):
        mine = [int(n["title"].split(":")[1]) for n in got if n["title"].startswith(f"{w}:")]
        assert mine == list(range(per_writer))
    seqs = await pool.fetch("SELECT seq FROM notifyd.notifications ORDER BY seq")
    assert [r["seq"] for r in seqs] == list(range(1, 8 * per_writer + 1))


async def _sync_under_writers(
    daemon: Daemon, user: str, query: str
) -> tuple[Client, dict[str, Any], int]:
    """50 items, then a client connecting and syncing from cursor 10 while 4 writers insert
    for the same user; returns the client, the response and how many items exist in all."""
    pool = await daemon.pool()
    for i in range(50):
        await daemon.notify(user, f"before {i}")
    client = await daemon.raw(f"?{query}token={daemon.token(user)}")
    await client.expect("connection-confirmed")
    stop = asyncio.Event()
    written = 50

    async def writer() -> None:
        nonlocal written
        async with pool.acquire() as conn:
            while not stop.is_set():
                await conn.execute("SELECT notifyd.notify($1, 'w', 'during', 'm')", user)
                written += 1
                await asyncio.sleep(random.random() * 0.002)

    writers = [asyncio.create_task(writer()) for _ in range(4)]
    await asyncio.sleep(0.05)
    result = await client.sync({f"user:{user}": 10}, limit=1000)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*writers)
    last = 0
    while last < written:
        last = max(last, (await client.next_data("notification:new"))["notification"]["seq"])
    return client, result, written


def _new_seqs(client: Client) -> list[int]:
    return [
        f["data"]["notification"]["seq"] for f in client.seen if f["type"] == "notification:new"
    ]


async def test_sync_while_writers_insert_gives_every_seq_once_in_order(daemon: Daemon) -> None:
    """With ?sync=1 the contract's order holds exactly: the response, then live items, every
    seq above the cursor once, ascending."""
    client, result, written = await _sync_under_writers(daemon, "busy", "sync=1&")
    seqs = [n["seq"] for n in result["notifications"]]
    cursor = result["cursors"]["user:busy"]
    assert seqs == list(range(11, cursor + 1))
    frames = [
        f["type"]
        for f in client.seen
        if f["type"].startswith("notification:") and f["type"] != "notification:unread-count"
    ]
    assert frames[0] == "notification:sync-response"  # nothing live before it
    assert _new_seqs(client) == list(range(cursor + 1, written + 1))


async def test_sync_without_flag_under_writers_still_gives_every_seq_once(daemon: Daemon) -> None:
    """Without ?sync=1, items sent live before the server read the request are not repeated
    in the response: every seq above the cursor arrives exactly once."""
    client, result, written = await _sync_under_writers(daemon, "busy2", "")
    got = [n["seq"] for n in result["notifications"]] + _new_seqs(client)
    assert sorted(got) == list(range(11, written + 1))
    answered = next(
        i for i, f in enumerate(client.seen) if f["type"] == "notification:sync-response"
    )
    after = [
        f["data"]["notification"]["seq"]
        for f in client.seen[answered:]
        if f["type"] == "notification:new"
    ]
    assert after == sorted(after)  # live items after the response: ascending


async def test_announcements_reach_roles_and_everyone(daemon: Daemon) -> None:
    admin = await daemon.connect("a1", ["Admin"])
    user = await daemon.connect("u6", ["user"])
    await daemon.sql("SELECT notifyd.notify_role('admin', 'schedule:updated', 'S', 'm')")
    n = (await admin.next_data("notification:new"))["notification"]
    assert n["stream"] == "role:admin" and n["seq"] == 1
    await daemon.sql("SELECT notifyd.broadcast('system:maintenance', 'M', 'tonight')")
    for client in (admin, user):
        n = (await client.next_data("notification:new"))["notification"]
        assert n["stream"] == "all" and n["type"] == "system:maintenance"
    assert not [f for f in await user.quiet(0.2) if f["type"] == "notification:new"]
    # announcements count for each user who receives them, unread and unseen
    await admin.quiet(0.2)
    for client, count in ((admin, 2), (user, 1)):
        last = [f["data"] for f in client.seen if f["type"] == "notification:unread-count"][-1]
        assert last == {"count": count, "unseen": count, "categories": {}}


async def test_rows_larger_than_a_notify_payload_are_delivered_in_order(daemon: Daemon) -> None:
    client = await daemon.connect("big")
    big = "é" * 20000  # 40 kB of UTF-8, far above NOTIFY's 8000 bytes
    pool = await daemon.pool()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT notifyd.notify('big', 't', 'small 1', 'm')")
        await conn.execute("SELECT notifyd.notify('big', 't', 'large', $1)", big)
        await conn.execute("SELECT notifyd.notify('big', 't', 'small 2', 'm')")
    await daemon.notify("big", "small 3")
    got = await collect_new(client, 4)
    assert [n["seq"] for n in got] == [1, 2, 3, 4]
    assert got[1]["message"] == big
    # a multi-row statement whose events span several payloads
    await pool.execute(
        "INSERT INTO notifyd.notifications (user_id, type, title, message) "
        "SELECT 'big', 't', 'bulk ' || g, repeat('m', 300) FROM generate_series(1, 100) g"
    )
    bulk = await collect_new(client, 100)
    assert [n["seq"] for n in bulk] == list(range(5, 105))


async def test_read_by_sql_or_client_reaches_every_device(daemon: Daemon) -> None:
    phone = await daemon.connect("r1")
    laptop = await daemon.connect("r1")
    ids = [await daemon.notify("r1", f"n{i}") for i in range(3)]
    for device in (phone, laptop):
        await collect_new(device, 3)
    # a client marks one read: the caller gets the reply with its ref; every device, the
    # caller's included, gets the item's new version (the stream's next seq)
    reply = await phone.request("notification:mark-read", {"ids": [ids[0]]}, "notification:read")
    assert reply["data"]["ids"] == [ids[0]] and reply["data"]["readAt"]
    for device in (phone, laptop):
        item = (await device.next_data("notification:updated"))["notification"]
        assert (item["id"], item["seq"], item["read"]) == (ids[0], 4, True)
        assert item["readAt"] == reply["data"]["readAt"]
    # SQL marks another read: every device hears it
    await daemon.sql("UPDATE notifyd.notifications SET read_at = now() WHERE id = $1", ids[1])
    for device in (phone, laptop):
        item = (await device.next_data("notification:updated"))["notification"]
        assert (item["id"], item["seq"], item["read"]) == (ids[1], 5, True)
    # mark-all-read marks the rest by a mark (seen, then read), whatever their number; the
    # unread count ends at 0 everywhere
    reply = await laptop.request("notification:mark-all-read", {}, "notification:read")
    assert reply["data"]["ids"] == [] and reply["data"]["readAt"]
    for device in (phone, laptop):
        seen = await device.next_data("notification:marked")
        read = await device.next_data("notification:marked")
        assert (seen["state"], seen["target"], seen["seq"], seen["upto"]) == (
            "seen",
            "user:r1",
            6,
            5,
        )
        assert (read["state"], read["target"], read["seq"]) == ("read", "user:r1", 7)
        assert read["at"] == reply["data"]["readAt"] and read["category"] is None
    for device in (phone, laptop):
        counts = [
            f["data"]["count"]
            for f in device.seen + await device.quiet(0.3)
            if f["type"] == "notification:unread-count"
        ]
        assert counts[-1] == 0
    assert await daemon.sql("SELECT sum(unread) FROM notifyd.tallies WHERE stream = 'user:r1'") == 0
    # marking again changes nothing
    again = await phone.request("notification:mark-read", {"ids": ids}, "notification:read")
    assert again["data"] == {"ids": [], "readAt": None}


async def test_delete_events_and_unread_count(daemon: Daemon) -> None:
    client = await daemon.connect("d1")
    nid = await daemon.notify("d1", "to delete")
    await client.next_data("notification:new")
    assert (await client.next_data("notification:unread-count"))["count"] == 1
    await daemon.sql("DELETE FROM notifyd.notifications WHERE id = $1", nid)
    # the deletion is a change of the stream like any other: it takes the next seq
    deleted = await client.next_data("notification:deleted")
    assert deleted == {"id": nid, "stream": "user:d1", "seq": 2}
    assert (await client.next_data("notification:unread-count"))["count"] == 0


async def test_unread_count_on_connect(daemon: Daemon) -> None:
    for i in range(3):
        await daemon.notify("c1", f"n{i}")
    client = await daemon.raw(f"?token={daemon.token('c1')}")
    await client.expect("connection-confirmed")
    assert (await client.next_data("notification:unread-count"))["count"] == 3


async def test_sql_api_validates_its_input(daemon: Daemon) -> None:
    pool = await daemon.pool()
    bad = [
        "INSERT INTO notifyd.notifications (type) VALUES ('no recipient')",
        "INSERT INTO notifyd.notifications (user_id, role, type) VALUES ('1', 'a', 't')",
        "SELECT notifyd.notify('1', 't', 'x', 'y', '[1]'::jsonb)",
        "SELECT notifyd.notify('1', 't', 'x', 'y', '{}', 'urgent')",
        "SELECT notifyd.notify('', 't', 'x', 'y')",
        "INSERT INTO notifyd.notifications (user_id, type, stream) VALUES ('1', 't', 'user:2')",
    ]
    for statement in bad:
        try:
            await pool.execute(statement)
        except asyncpg.CheckViolationError:
            continue
        raise AssertionError(f"accepted: {statement}")
    nid = await daemon.notify("1")
    try:
        await pool.execute("UPDATE notifyd.notifications SET user_id = '2' WHERE id = $1", nid)
    except asyncpg.CheckViolationError:
        pass
    else:
        raise AssertionError("a notification moved to another user")


async def test_sync_does_not_repeat_what_the_connection_was_just_sent(daemon: Daemon) -> None:
    """A live item written before the server read the client's sync-request is still on its
    way when the client sends the request: the response must not repeat it."""
    client = await daemon.connect("race")
    await daemon.notify("race", "live before the request")
    await client.expect("notification:new")  # sent live: seq 1 is this connection's
    await daemon.notify("race", "committed later")
    result = await client.sync({"user:race": 0})
    seqs = [n["seq"] for n in result["notifications"]]
    live = [
        f["data"]["notification"]["seq"] for f in client.seen if f["type"] == "notification:new"
    ]
    assert sorted(seqs + live) == [1, 2] and len(seqs + live) == 2  # each exactly once
    assert result["cursors"]["user:race"] == 2


async def test_a_stream_without_cursor_gets_its_items_as_they_are_even_just_sent_live(
    daemon: Daemon,
) -> None:
    """Never twice is for cursors: a stream asked without one (its latest items, or those
    since a time) or reset gets its items as they are now, those just sent live included, so
    a refresh of read state, or a cache rebuilt from the response, misses nothing."""
    client = await daemon.connect("fresh")
    first = await daemon.notify("fresh", "n1")
    await daemon.notify("fresh", "n2")
    await collect_new(client, 2)  # sent live: in flight, for a cursor
    await daemon.sql("UPDATE notifyd.notifications SET read_at = now() WHERE id = $1", first)
    await client.expect("notification:updated")  # n1, now at seq 3
    latest = await client.sync({})
    assert [(n["seq"], n["read"]) for n in latest["notifications"]] == [(2, False), (3, True)]
    assert latest["cursors"]["user:fresh"] == 3

    await daemon.notify("fresh", "n3")
    await collect_new(client, 1)
    epoch = "2000-01-01T00:00:00Z"
    since = await client.sync({}, since=epoch)
    assert [n["seq"] for n in since["notifications"]] == [2, 3, 4]

    await daemon.notify("fresh", "n4")
    await collect_new(client, 1)
    reset = await client.sync({"user:fresh": 99})
    assert reset["reset"] == ["user:fresh"]
    assert [n["seq"] for n in reset["notifications"]] == [2, 3, 4, 5]

    await daemon.notify("fresh", "n5")
    await collect_new(client, 1)
    caught_up = await client.sync({"user:fresh": 5})  # a cursor: n5 is on its way already
    assert caught_up["notifications"] == [] and caught_up["cursors"]["user:fresh"] == 6


async def test_pages_after_a_stream_without_cursor_leave_out_nothing_sent_live(
    fresh_db: str,
) -> None:
    """The latest items cut by the response's byte budget: the pages that follow, asked with
    its cursors, give the rest, items sent live before the first request included."""
    async with running_daemon(fresh_db, max_response_bytes=4096) as d:
        client = await d.connect("fresh2")
        for i in range(4):
            await d.sql("SELECT notifyd.notify('fresh2', 't', $1, repeat('x', 1500))", f"n{i}")
        await collect_new(client, 4)
        page = await client.sync({})
        assert [n["seq"] for n in page["notifications"]] == [1, 2] and page["hasMore"]
        page = await client.sync(page["cursors"])
        assert [n["seq"] for n in page["notifications"]] == [3, 4] and not page["hasMore"]
        await d.notify("fresh2", "live")
        assert (await client.next_data("notification:new"))["notification"]["seq"] == 5


async def test_large_row_queued_during_a_fetch_is_not_dropped(daemon: Daemon) -> None:
    """Two rows too large for NOTIFY, committed a moment apart: the second arrives while the
    first is being fetched by id, and must be fetched too, not taken for deleted."""
    client = await daemon.connect("big2")
    pool = await daemon.pool()
    big = "x" * 10000
    await asyncio.gather(
        *(pool.execute("SELECT notifyd.notify('big2', 't', $1, $2)", str(i), big) for i in range(6))
    )
    got = await collect_new(client, 6)
    assert sorted(n["seq"] for n in got) == [1, 2, 3, 4, 5, 6]
    assert [n["seq"] for n in got] == [1, 2, 3, 4, 5, 6]


async def test_reconnect_with_sync_flag_replays_in_order_with_writers_racing(
    daemon: Daemon,
) -> None:
    """?sync=1: nothing goes out live until the first sync-request, so items committed between
    the handshake and the request cannot overtake the missed ones."""
    for i in range(3):
        await daemon.notify("flag", f"missed {i}")
    client = await daemon.raw(f"?sync=1&token={daemon.token('flag')}")
    await client.expect("connection-confirmed")
    for i in range(3):  # committed after the connection went live, before the request
        await daemon.notify("flag", f"racing {i}")
    await client.quiet(0.2)
    assert not [f for f in client.seen if f["type"] == "notification:new"]
    result = await client.sync({"user:flag": 1})
    assert [n["seq"] for n in result["notifications"]] == [2, 3, 4, 5, 6]
    await daemon.notify("flag", "after")
    assert (await client.next_data("notification:new"))["notification"]["seq"] == 7
    news = [
        f["data"]["notification"]["seq"] for f in client.seen if f["type"] == "notification:new"
    ]
    assert news == [7]


async def test_sync_flag_without_a_sync_request_sends_nothing_live_and_still_counts(
    daemon: Daemon,
) -> None:
    client = await daemon.raw(f"?sync=1&token={daemon.token('flag2')}")
    await client.expect("connection-confirmed")
    await daemon.notify("flag2", "waits for the sync")
    count = await client.next_data("notification:unread-count")
    while count["count"] == 0:  # the one on connect, then the one after the insert
        count = await client.next_data("notification:unread-count")
    assert count["count"] == 1
    assert not [f for f in client.seen if f["type"] == "notification:new"]


# -- what one statement sends ----------------------------------------------------------------


async def _frames_until(
    client: Client, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not done(frames):
            frames.append(await client.recv(timeout))
    return frames + await client.quiet(0.3)


def _kinds(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f["data"] for f in frames if f["type"] == kind]


async def test_one_statement_sends_one_unread_count_per_user(daemon: Daemon) -> None:
    phone, laptop = await daemon.connect("bulk"), await daemon.connect("bulk")
    await daemon.sql(
        "INSERT INTO notifyd.notifications (user_id, type, title) "
        "SELECT 'bulk', 'bulk', 'n' || i FROM generate_series(1, 1500) AS i"
    )
    frames = await _frames_until(phone, lambda fs: len(_kinds(fs, "notification:new")) == 1500)
    assert [n["notification"]["seq"] for n in _kinds(frames, "notification:new")] == list(
        range(1, 1501)
    )
    counts = {"count": 1500, "unseen": 1500, "categories": {}}
    assert _kinds(frames, "notification:unread-count") == [counts]
    assert frames[-1]["type"] == "notification:unread-count"
    await laptop.quiet(0.5)
    # one UPDATE of every row: one count after its last change
    await daemon.sql("UPDATE notifyd.notifications SET read_at = now() WHERE user_id = 'bulk'")
    frames = await _frames_until(laptop, lambda fs: len(_kinds(fs, "notification:updated")) == 1500)
    versions = [u["notification"]["seq"] for u in _kinds(frames, "notification:updated")]
    assert versions == list(range(1501, 3001))
    assert _kinds(frames, "notification:unread-count") == [
        {"count": 0, "unseen": 0, "categories": {}}
    ]
    assert frames[-1]["type"] == "notification:unread-count"


async def test_a_bulk_change_is_packed_into_payloads_and_kept_in_order(daemon: Daemon) -> None:
    await daemon.sql(
        "ALTER TABLE notifyd.notifications ALTER COLUMN id RESTART WITH 1000000000000000"
    )
    phone, laptop = await daemon.connect("long"), await daemon.connect("long")
    await daemon.sql(
        "INSERT INTO notifyd.notifications (user_id, type) "
        "SELECT 'long', 'bulk' FROM generate_series(1, 600)"
    )
    await _frames_until(laptop, lambda fs: len(_kinds(fs, "notification:new")) == 600)
    await phone.quiet(0.5)
    ids = list(range(10**15, 10**15 + 600))
    reply = await phone.request("notification:mark-read", {"ids": ids[:500]}, "notification:read")
    assert reply["data"]["ids"] == ids[:500]
    await daemon.sql("SELECT notifyd.mark_read('long', $1::bigint[])", ids[500:])
    frames = await _frames_until(laptop, lambda fs: len(_kinds(fs, "notification:updated")) == 600)
    items = [u["notification"] for u in _kinds(frames, "notification:updated")]
    assert [n["seq"] for n in items] == list(range(601, 1201))
    assert sorted(n["id"] for n in items) == ids
    assert all(n["read"] for n in items)
    assert _kinds(frames, "notification:unread-count")[-1] == {
        "count": 0,
        "unseen": 0,
        "categories": {},
    }


async def test_marking_unread_from_sql_sends_the_item_whole(daemon: Daemon) -> None:
    phone, laptop = await daemon.connect("u1"), await daemon.connect("u1")
    nid = await daemon.notify("u1", "again")
    await daemon.sql("UPDATE notifyd.notifications SET read_at = now() WHERE id = $1", nid)
    for client in (phone, laptop):
        await client.expect("notification:updated")
        await client.quiet(0.2)
    await daemon.sql("UPDATE notifyd.notifications SET read_at = NULL WHERE id = $1", nid)
    for client in (phone, laptop):
        updated = (await client.next_data("notification:updated"))["notification"]
        assert (updated["id"], updated["title"], updated["read"], updated["readAt"]) == (
            nid,
            "again",
            False,
            None,
        )
        assert (await client.next_data("notification:unread-count"))["count"] == 1
