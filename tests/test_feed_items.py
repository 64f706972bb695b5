"""What an item can do in the feed, over real WebSockets, HTTP and SQL: groups that collapse
(8 concurrent writers included), scheduled delivery (once, across processes), expiry,
actions, and pages of the feed newest first (protocol/README.md §3, §5)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import orjson
import pytest
from support import Daemon, admin_exec, http_request, running_daemon

from notifyd.client import NotifydClient

APPT = "SELECT notifyd.notify($1, 'appointment', $2, 'm', group_key => 'patient:7', actor => $3)"


async def test_a_group_collapses_into_one_item(daemon: Daemon) -> None:
    client = await daemon.connect("doc")
    first = await daemon.sql(APPT, "doc", "1 appointment", "Dr. Lee")
    assert (await client.next_data("notification:new"))["notification"]["groupCount"] == 1
    assert (await client.next_data("notification:unread-count"))["count"] == 1
    await client.request("notification:mark-seen", {"ids": [first]}, "notification:changed")
    assert (await client.next_data("notification:updated"))["notification"]["seen"] is True
    assert (await client.next_data("notification:unread-count"))["unseen"] == 0
    # the next of the group: the same item, the latest content, one more, unseen again
    again = await daemon.sql(APPT, "doc", "2 appointments", "Dr. Kim")
    assert again == first  # notify() gives the group's id
    item = (await client.next_data("notification:updated"))["notification"]
    assert (item["id"], item["title"], item["groupCount"], item["actors"], item["seen"]) == (
        first,
        "2 appointments",
        2,
        ["Dr. Kim", "Dr. Lee"],
        False,
    )
    assert item["deliveredSeq"] == item["seq"]  # moved to the top
    counts = await client.next_data("notification:unread-count")
    assert (counts["count"], counts["unseen"]) == (1, 1)  # the unread count did not grow
    await daemon.sql(APPT, "doc", "3 appointments", "Dr. Lee")
    item = (await client.next_data("notification:updated"))["notification"]
    assert (item["groupCount"], item["actors"]) == (3, ["Dr. Lee", "Dr. Kim"])
    # once read, the group is closed: the next starts a new one
    await client.request("notification:mark-read", {"ids": [first]}, "notification:read")
    later = await daemon.sql(APPT, "doc", "1 appointment", "Dr. Kim")
    assert later != first
    fresh = (await client.next_data("notification:new"))["notification"]
    assert (fresh["id"], fresh["groupCount"]) == (later, 1)
    assert (
        await daemon.sql("SELECT count(*) FROM notifyd.notifications WHERE group_key = 'patient:7'")
        == 2
    )
    # a device that syncs from the start gets each item's last state, once
    other = await daemon.connect("doc")
    synced = await other.sync({"user:doc": 0})
    assert sorted((n["id"], n["groupCount"]) for n in synced["notifications"]) == [
        (first, 3),
        (later, 1),
    ]


async def test_concurrent_writers_of_a_group_lose_nothing(daemon: Daemon) -> None:
    """8 writers, each on a connection of its own, 25 rows each into one group at once: one
    item counting 200, and a group per user never duplicated."""
    pools = [await asyncpg.connect(daemon.dsn) for _ in range(8)]
    try:

        async def writer(conn: asyncpg.Connection, n: int) -> None:
            for i in range(25):
                await conn.fetchval(APPT, "busy", f"w{n}-{i}", f"writer {n}")

        await asyncio.gather(*(writer(c, n) for n, c in enumerate(pools)))
    finally:
        for conn in pools:
            await conn.close()
    rows = await (await daemon.pool()).fetch(
        "SELECT group_count, cardinality(actors) AS actors FROM notifyd.notifications "
        "WHERE stream = 'user:busy'"
    )
    assert [(r["group_count"], r["actors"]) for r in rows] == [(200, 8)]
    assert await daemon.sql("SELECT unread FROM notifyd.tallies WHERE stream = 'user:busy'") == 1


async def test_grouping_is_refused_where_it_has_no_meaning(daemon: Daemon) -> None:
    for query in (
        "SELECT notifyd.notify_role('staff', 't', 't', 'm')",  # fine: no group
        "INSERT INTO notifyd.notifications (role, type, group_key) VALUES ('staff', 't', 'g')",
        "SELECT notifyd.notify('u', 't', 't', 'm', group_key => 'g', deliver_at => now() + '1 h')",
        "SELECT notifyd.notify('u', 't', 't', 'm', expires_at => now() - '1 s'::interval)",
        "SELECT notifyd.notify('u', 't', 't', 'm', deliver_at => now() + '2 h', "
        "expires_at => now() + '1 h')",
        "SELECT notifyd.notify('u', 't', 't', 'm', group_key => '')",
    ):
        if "group_key" not in query and "expires_at" not in query:
            await daemon.sql(query)
            continue
        with pytest.raises(asyncpg.CheckViolationError):
            await daemon.sql(query)


async def test_a_scheduled_item_arrives_once_at_its_time(fresh_db: str) -> None:
    """Two processes run the scheduler; the item is invisible until its time, then delivered
    once, in the stream's order at that moment. Deleting another one before its time cancels
    it."""
    async with running_daemon(fresh_db) as one, running_daemon(fresh_db) as two:
        clients = [await one.connect("sam"), await two.connect("sam")]
        nid = await one.sql(
            "SELECT notifyd.notify('sam', 'maintenance', 'Tonight', 'm', "
            "deliver_at => now() + interval '1.5 seconds')"
        )
        cancelled = await one.sql(
            "SELECT notifyd.notify('sam', 't', 'never', 'm', "
            "deliver_at => now() + interval '1.5 seconds')"
        )
        await one.sql("DELETE FROM notifyd.notifications WHERE id = $1", cancelled)
        before = await one.notify("sam", "now")
        # invisible: not sent, not counted, not in a sync or a page
        for client in clients:
            assert (await client.next_data("notification:new"))["notification"]["id"] == before
            assert (await client.next_data("notification:unread-count"))["count"] == 1
        fresh = await one.connect("sam")  # (a connection is not sent again what it got live)
        for cursors in ({"user:sam": 0}, {}):  # after a cursor, and the latest items
            synced = await fresh.sync(cursors)
            assert [n["id"] for n in synced["notifications"]] == [before]
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
        synced = await (await one.connect("sam")).sync({}, since=since)
        assert [n["id"] for n in synced["notifications"]] == [before]
        page = await fresh.request("notification:page", {}, "notification:page-response")
        assert [n["id"] for n in page["data"]["notifications"]] == [before]
        # then delivered once, after what was delivered before it
        for client in clients:
            item = (await client.next_data("notification:new", timeout=10))["notification"]
            assert item["id"] == nid and item["seq"] == item["deliveredSeq"] == 2
            assert (await client.next_data("notification:unread-count"))["count"] == 2
        for client in clients:
            news = [f for f in await client.quiet(1.2) if f["type"] == "notification:new"]
            assert news == []
        page = await clients[1].request("notification:page", {}, "notification:page-response")
        assert [n["id"] for n in page["data"]["notifications"]] == [nid, before]
        assert await one.sql("SELECT count(*) FROM notifyd.removals") == 0


async def test_an_expired_item_is_removed_once(daemon: Daemon) -> None:
    client = await daemon.connect("eve", ["staff"])
    nid = await daemon.sql(
        "SELECT notifyd.notify_role('staff', 'maintenance', '22:00', 'm', "
        "expires_at => now() + interval '1 second')"
    )
    assert (await client.next_data("notification:new"))["notification"]["expiresAt"] is not None
    assert (await client.next_data("notification:unread-count"))["count"] == 1
    gone = await client.next_data("notification:deleted", timeout=10)
    assert (gone["id"], gone["stream"]) == (nid, "role:staff")
    assert (await client.next_data("notification:unread-count"))["count"] == 0
    assert not [f for f in await client.quiet(1.2) if f["type"] == "notification:deleted"]
    other = await daemon.connect("eve", ["staff"])
    synced = await other.sync({"role:staff": 0})
    assert (synced["notifications"], synced["removed"]) == ([], [nid])


ACTIONS = '[{"id": "yes", "label": "Approve"}, {"id": "no", "label": "Decline", "url": "/no"}]'


async def test_an_action_taken_is_recorded_for_its_user(daemon: Daemon) -> None:
    ann, bob = await daemon.connect("ann", ["staff"]), await daemon.connect("bob", ["staff"])
    own = await daemon.sql(
        "SELECT notifyd.notify('ann', 'leave', 'Approve leave?', 'm', actions => $1::jsonb)",
        ACTIONS,
    )
    shared = await daemon.sql(
        "SELECT notifyd.notify_role('staff', 'rota', 'Swap shifts?', 'm', actions => $1::jsonb)",
        ACTIONS,
    )
    item = (await ann.next_data("notification:new"))["notification"]
    assert item["actions"] == orjson.loads(ACTIONS)
    await ann.quiet(0.3)
    for nid, action in ((own, "yes"), (shared, "no")):
        reply = await ann.request(
            "notification:act", {"id": nid, "action": action}, "notification:acted"
        )
        assert (reply["data"]["id"], reply["data"]["action"]) == (nid, action)
        # read, then the action: the last change carries both
        updates = [
            f["data"]["notification"]
            for f in await ann.quiet(0.5)
            if f["type"] == "notification:updated"
        ]
        assert (updates[-1]["id"], updates[-1]["read"], updates[-1]["action"]) == (
            nid,
            True,
            action,
        )
        assert updates[-1]["interactedAt"] == reply["data"]["interactedAt"]
    rows = await (await daemon.pool()).fetch(
        "SELECT id, user_id, action FROM notifyd.interactions ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [(own, "ann", "yes"), (shared, "ann", "no")]
    # bob's state of the shared item is his own; he cannot act on ann's item
    assert not [f for f in await bob.quiet(0.3) if f["type"] == "notification:updated"]
    for data in ({"id": own, "action": "yes"}, {"id": shared, "action": "maybe"}, {"id": 0}):
        reply = await bob.request("notification:act", data, "notification:acted")
        assert reply["data"]["code"] == "invalid-data", data
    # over HTTP
    token = daemon.token("bob", ["staff"])
    for nid, status_wanted, key, value in (
        (shared, 200, "action", "yes"),
        (own, 400, "code", "invalid-data"),
    ):
        status, _, body = await http_request(
            daemon.app.port,
            "POST",
            f"/v1/notifications/act?id={nid}&action=yes",
            {"Authorization": f"Bearer {token}"},
        )
        assert (status, orjson.loads(body)[key]) == (status_wanted, value)


async def test_actions_that_could_run_script_are_refused(daemon: Daemon) -> None:
    for actions in (
        '[{"id": "x", "label": "X", "url": "javascript:alert(1)"}]',
        '[{"id": "x", "label": "X", "url": "//evil.example"}]',
        '[{"id": "x", "label": "X", "url": "/\\\\evil.example"}]',
        '[{"id": "x", "label": "X", "url": "/\\t/evil.example"}]',
        '[{"id": "x", "label": "X", "url": "/\\n/evil.example"}]',
        '[{"id": "x", "label": "X", "url": "https://a.example/ b"}]',
        '[{"id": "x", "label": "X", "url": "data:text/html,hi"}]',
        '[{"id": "x", "label": "X"}, {"id": "x", "label": "Y"}]',
        '[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}, {"id": "c", "label": "C"}, '
        '{"id": "d", "label": "D"}]',
        '[{"id": "x", "label": "X", "onclick": "y"}]',
        '[{"id": "", "label": "X"}]',
        '{"id": "x"}',
    ):
        with pytest.raises(asyncpg.CheckViolationError):
            await daemon.sql(
                "SELECT notifyd.notify('u', 't', 't', 'm', actions => $1::jsonb)", actions
            )


async def test_a_writer_cannot_answer_the_check_on_actions_itself(daemon: Daemon) -> None:
    """The CHECK runs in the writer's session: an `=` of the writer's own, in a schema it puts
    before pg_catalog, is not the one it uses."""
    role = "actions_writer"
    await admin_exec(
        daemon.dsn,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA notifyd TO {role}",
        f"GRANT SELECT, INSERT ON notifyd.notifications TO {role}",
        f"CREATE SCHEMA mine AUTHORIZATION {role}",
    )
    conn = await asyncpg.connect(daemon.dsn, user=role)
    try:
        await conn.execute(
            "CREATE FUNCTION mine.always(jsonb, jsonb) RETURNS boolean "
            "LANGUAGE sql IMMUTABLE AS 'SELECT true'; "
            "CREATE OPERATOR mine.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = mine.always); "
            "SET search_path = mine, pg_catalog"
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO notifyd.notifications (user_id, type, actions) VALUES "
                """('u', 't', '[{"id": "x", "label": "X", "url": "javascript:alert(1)"}]')"""
            )
    finally:
        await conn.close()
        await admin_exec(
            daemon.dsn, "DROP SCHEMA mine CASCADE", f"DROP OWNED BY {role}", f"DROP ROLE {role}"
        )


async def _pages(client: Any, data: dict[str, Any], limit: int = 20) -> tuple[list[int], list[int]]:
    """Every id of the feed under `data`, page by page, and the size of each page."""
    ids: list[int] = []
    sizes: list[int] = []
    cursor = None
    while True:
        ask = {**data, "limit": limit, **({"next": cursor} if cursor else {})}
        reply = await client.request("notification:page", ask, "notification:page-response")
        assert reply["type"] == "notification:page-response", reply
        page = reply["data"]
        ids += [n["id"] for n in page["notifications"]]
        sizes.append(len(page["notifications"]))
        cursor = page["next"]
        if cursor is None:
            return ids, sizes


async def test_pages_of_the_feed_newest_first(daemon: Daemon) -> None:
    pool = await daemon.pool()
    # 45 own items, 10 of them billing; 15 for everyone; 5 of a role the token lacks
    await pool.execute(
        "SELECT notifyd.notify('pia', 't', 'own ' || i, 'm', "
        "category => CASE WHEN i % 5 = 0 THEN 'billing' END) FROM generate_series(1, 45) i"
    )
    await pool.execute(
        "SELECT notifyd.broadcast('t', 'all ' || i, 'm') FROM generate_series(1, 15) i"
    )
    await pool.execute(
        "SELECT notifyd.notify_role('vip', 't', 'vip ' || i, 'm') FROM generate_series(1, 5) i"
    )
    client = await daemon.connect("pia")
    newest = [
        r["id"]
        for r in await pool.fetch(
            "SELECT id FROM notifyd.notifications WHERE stream IN ('user:pia', 'all') "
            "ORDER BY created_at DESC, id DESC"
        )
    ]
    ids, sizes = await _pages(client, {})
    assert ids == newest and sizes == [20, 20, 20]
    billing, _ = await _pages(client, {"category": "billing"}, 3)
    assert len(billing) == 9
    # states: read and archive some, then each filter
    await client.request("notification:mark-read", {"ids": newest[:10]}, "notification:read")
    await client.request("notification:archive", {"ids": newest[5:8]}, "notification:changed")
    assert (await _pages(client, {"state": "unread"}))[0] == newest[10:]
    assert (await _pages(client, {"state": "archived"}))[0] == newest[5:8]
    assert (await _pages(client, {}))[0] == newest[:5] + newest[8:]
    await client.request("notification:mark-seen", {"all": True}, "notification:changed")
    assert (await _pages(client, {"state": "unseen"}))[0] == []
    # over HTTP, the same pages
    token = daemon.token("pia")
    path, got = "/v1/feed?state=unread&limit=30", []
    while path:
        status, _, body = await http_request(
            daemon.app.port, "GET", path, {"Authorization": f"Bearer {token}"}
        )
        assert status == 200, body
        page = orjson.loads(body)
        got += [n["id"] for n in page["notifications"]]
        path = f"/v1/feed?state=unread&limit=30&next={page['next']}" if page["next"] else ""
    assert got == newest[10:]
    for bad in ({"state": "read"}, {"limit": 0}, {"limit": 101}, {"next": "x"}, {"next": 5}):
        reply = await client.request("notification:page", bad, "notification:page-response")
        assert reply["data"]["code"] == "invalid-data", bad


async def test_a_sparse_filter_answers_short_pages_rather_than_scanning(daemon: Daemon) -> None:
    pool = await daemon.pool()
    await pool.execute(
        "SELECT notifyd.notify('rex', 't', 'x', 'm', category => CASE WHEN i = 1 THEN 'rare' END)"
        " FROM generate_series(1, 1500) i"
    )
    rare = await daemon.sql("SELECT id FROM notifyd.notifications WHERE category = 'rare'")
    client = await daemon.connect("rex")
    for data, found in (({"category": "rare"}, [rare]), ({"state": "archived"}, [])):
        # the first 1,000 items looked at hold none: an empty page, and where to go on
        reply = await client.request("notification:page", data, "notification:page-response")
        first = reply["data"]
        assert first["notifications"] == [] and first["next"] is not None, data
        reply = await client.request(
            "notification:page", {**data, "next": first["next"]}, "notification:page-response"
        )
        assert [n["id"] for n in reply["data"]["notifications"]] == found
        assert reply["data"]["next"] is None


async def test_the_python_client_pages_and_acts(daemon: Daemon) -> None:
    ids = [
        await daemon.sql(
            "SELECT notifyd.notify('py', 't', $1, 'm', actions => $2::jsonb)", f"n{i}", ACTIONS
        )
        for i in range(5)
    ]
    client = NotifydClient(daemon.url, daemon.token("py"), {})
    run = asyncio.get_running_loop().create_task(_drain(client))
    try:
        for _ in range(500):
            if client.synced:
                break
            await asyncio.sleep(0.01)
        first = await client.page(limit=3)
        assert [n["id"] for n in first["data"]["notifications"]] == ids[:1:-1]
        rest = await client.page(limit=3, next_page=first["data"]["next"])
        assert [n["id"] for n in rest["data"]["notifications"]] == ids[1::-1]
        assert rest["data"]["next"] is None
        acted = await client.act(ids[0], "no")
        assert (acted["type"], acted["data"]["action"]) == ("notification:acted", "no")
    finally:
        await client.stop()
        await run


async def _drain(client: NotifydClient) -> None:
    async for _ in client.events():
        pass


async def test_what_is_due_is_not_held_up_by_a_locked_stream(daemon: Daemon) -> None:
    """An app transaction holding one user's stream (an insert not committed yet) delays only
    that user's scheduled item; another user's scheduled and expiring items come at their
    time."""
    free, held = await daemon.connect("free"), await daemon.connect("held")
    pool = await daemon.pool()
    await pool.execute(
        "INSERT INTO notifyd.notifications (user_id, type, title, deliver_at) "
        "SELECT u, 't', 'later', now() + interval '1 second' "
        "FROM unnest(ARRAY['held', 'free']) u"
    )
    gone = await daemon.sql(
        "SELECT notifyd.notify('free', 't', 'short', 'm', expires_at => now() + interval '1 s')"
    )
    async with pool.acquire() as app:
        transaction = app.transaction()
        await transaction.start()
        await app.execute("SELECT notifyd.notify('held', 't', 'in flight', 'm')")
        seen: set[str] = set()
        async with asyncio.timeout(10):
            while seen != {"later", "deleted"}:
                frame = await free.recv(10)
                if (
                    frame["type"] == "notification:new"
                    and frame["data"]["notification"]["title"] == "later"
                ):
                    seen.add("later")
                elif frame["type"] == "notification:deleted" and frame["data"]["id"] == gone:
                    seen.add("deleted")
        assert await daemon.sql(
            "SELECT seq IS NULL FROM notifyd.notifications WHERE user_id = 'held'"
        )
        await transaction.rollback()
    item = (await held.next_data("notification:new", timeout=10))["notification"]
    assert item["title"] == "later"


async def test_one_insert_cannot_hold_two_rows_of_one_group(daemon: Daemon) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="separate statements"):
        await daemon.sql(
            "INSERT INTO notifyd.notifications (user_id, type, group_key) "
            "VALUES ('g2', 't', 'k'), ('g2', 't', 'k')"
        )
    # in two statements of one transaction: one group
    async with (await daemon.pool()).acquire() as conn, conn.transaction():
        for _ in range(2):
            await conn.execute(
                "INSERT INTO notifyd.notifications (user_id, type, group_key) "
                "VALUES ('g2', 't', 'k')"
            )
    assert await daemon.sql("SELECT group_count FROM notifyd.notifications") == 2


async def test_a_connection_has_few_operations_in_flight(daemon: Daemon) -> None:
    client = await daemon.connect("busy")
    for i in range(20):
        await client.send("notification:page", {"state": "archived"}, f"p{i}")
    replies: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(replies) < 20:
            frame = await client.recv(10)
            if frame.get("ref", "").startswith("p"):
                replies.append(frame)
    codes = [f["data"]["code"] for f in replies if f["type"] == "error"]
    assert codes and set(codes) == {"too-many-operations"}
    assert len(replies) - len(codes) >= 4


async def test_pages_reach_items_dated_before_1970(daemon: Daemon) -> None:
    pool = await daemon.pool()
    await pool.execute(
        "INSERT INTO notifyd.notifications (user_id, type, title, created_at) "
        "SELECT 'old', 't', 'n' || i, timestamptz '1969-12-31 23:59:00Z' + i * interval '1 s' "
        "FROM generate_series(1, 5) i"
    )
    client = await daemon.connect("old")
    ids, sizes = await _pages(client, {}, 2)
    assert len(ids) == 5 and sizes == [2, 2, 1]


async def test_a_created_at_the_daemon_cannot_page_from_is_refused(daemon: Daemon) -> None:
    """A feed page's cursor carries created_at, read as a Python datetime (years 1 to 9999, the
    two very ends of which the driver sends back as infinities): an INSERT of a row outside the
    open range between them, which would break every page of its stream, is refused; the edges
    inside it are taken, and paged through one by one."""
    for when in (
        "10000-01-01 00:00:00Z",
        "20260-06-01Z",
        "0044-03-15 BC",
        "9999-12-31 23:59:59.999999Z",
        "0001-01-01 00:00:00Z",
    ):
        with pytest.raises(asyncpg.CheckViolationError, match="notifications_created_at_check"):
            await daemon.sql(
                "INSERT INTO notifyd.notifications (stream, type, title, created_at) "
                "VALUES ('all', 't', 'x', $1::text::timestamptz)",
                when,
            )
    await daemon.sql(
        "INSERT INTO notifyd.notifications (user_id, type, title, created_at) "
        "SELECT 'edge', 't', 'n', at FROM unnest(ARRAY["
        "'9999-12-31 23:59:59.999998Z', '9999-12-31 23:59:59.999998Z',"
        "'0001-01-01 00:00:00.000001Z', '0001-01-01 00:00:00.000001Z']::timestamptz[]) at"
    )
    client = await daemon.connect("edge")
    ids, sizes = await _pages(client, {}, 1)
    assert len(set(ids)) == 4 and sizes == [1, 1, 1, 1]
