"""The feed's states over real WebSockets: each user's own state of a shared item, an edit of
one seen by each user with their own states, marks, snoozed items waking, the counts that
follow, and the refusals of bad state requests (protocol/README.md §5, the state operations)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from support import Daemon


def _later(seconds: float) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_each_user_has_their_own_state_of_a_shared_item(daemon: Daemon) -> None:
    ann_phone, ann_laptop = await daemon.connect("ann", ["staff"]), await daemon.connect("ann")
    bob = await daemon.connect("bob", ["staff"])
    nid = await daemon.sql("SELECT notifyd.notify_role('staff', 't', 'Rota', 'm')")
    for client in (ann_phone, bob):
        assert (await client.next_data("notification:new"))["notification"]["id"] == nid
        assert (await client.next_data("notification:unread-count"))["count"] == 1
    reply = await ann_phone.request("notification:mark-read", {"ids": [nid]}, "notification:read")
    assert reply["data"]["ids"] == [nid]
    # the change is ann's: at its place in her own stream, on her device that receives the
    # role's stream; her laptop's token lacks the role, so it gets neither the item nor it
    update = await ann_phone.next_data("notification:updated")
    assert update["stream"] == "user:ann" and update["seq"] >= 1
    item = update["notification"]
    assert (item["id"], item["stream"], item["read"], item["seen"]) == (
        nid,
        "role:staff",
        True,
        True,
    )
    assert (await ann_phone.next_data("notification:unread-count"))["count"] == 0
    assert not [f for f in await ann_laptop.quiet(0.3) if f["type"] == "notification:updated"]
    # bob's state is untouched
    assert not [f for f in await bob.quiet(0.3) if f["type"] != "pong"]
    # an edit of the item: each user gets it with their own state
    await daemon.sql("UPDATE notifyd.notifications SET title = 'Rota (new)' WHERE id = $1", nid)
    mine = (await ann_phone.next_data("notification:updated"))["notification"]
    theirs = (await bob.next_data("notification:updated"))["notification"]
    assert (mine["title"], mine["read"]) == ("Rota (new)", True)
    assert (theirs["title"], theirs["read"]) == ("Rota (new)", False)
    # a sync from before gives each their own state too (from new devices: a connection is
    # never sent again what it was sent live)
    for user, read in (("ann", True), ("bob", False)):
        device = await daemon.connect(user, ["staff"])
        synced = await device.sync({"role:staff": 0, f"user:{user}": 0})
        assert [(n["id"], n["read"]) for n in synced["notifications"]] == [(nid, read)]
    # the row itself has no state of its own
    assert await daemon.sql("SELECT read_at FROM notifyd.notifications WHERE id = $1", nid) is None


async def test_a_mark_covers_what_was_delivered_before_it(daemon: Daemon) -> None:
    client = await daemon.connect("cat")
    billing = [
        await daemon.sql(
            "SELECT notifyd.notify('cat', 'invoice', 'due', 'm', category => 'billing')"
        )
        for _ in range(2)
    ]
    other = await daemon.notify("cat", "hello")
    for _ in range(3):
        await client.next_data("notification:new")
    await client.quiet(0.3)
    reply = await client.request(
        "notification:archive", {"all": True, "category": "billing"}, "notification:changed"
    )
    assert reply["data"] == {"ids": [], "all": True}
    mark = await client.next_data("notification:marked")
    assert (mark["state"], mark["category"], mark["target"]) == ("archived", "billing", "user:cat")
    counts = await client.next_data("notification:unread-count")
    assert counts == {"count": 1, "unseen": 1, "categories": {}}
    # an item delivered after the mark is not covered by it
    later = await daemon.sql(
        "SELECT notifyd.notify('cat', 'invoice', 'new', 'm', category => 'billing')"
    )
    new = (await client.next_data("notification:new"))["notification"]
    assert (new["id"], new["archived"]) == (later, False) and new["deliveredSeq"] > mark["upto"]
    states = {
        r["id"]: r["archived"]
        for r in await (await daemon.pool()).fetch(
            "SELECT id, (notifyd.to_wire(n, 'user:cat')->>'archived')::boolean AS archived "
            "FROM notifyd.notifications n WHERE stream = 'user:cat'"
        )
    }
    assert states == {billing[0]: True, billing[1]: True, other: False, later: False}


async def test_a_snoozed_item_leaves_the_counts_and_comes_back(daemon: Daemon) -> None:
    client = await daemon.connect("zz")
    nid = await daemon.notify("zz", "later")
    await client.next_data("notification:new")
    await client.quiet(0.3)
    until = _later(1.5)
    reply = await client.request(
        "notification:snooze", {"ids": [nid], "until": until}, "notification:changed"
    )
    assert reply["data"] == {"ids": [nid], "all": False}
    snoozed = (await client.next_data("notification:updated"))["notification"]
    assert snoozed["snoozedUntil"] is not None
    assert (await client.next_data("notification:unread-count"))["count"] == 0
    woken = (await client.next_data("notification:updated", timeout=10))["notification"]
    assert woken["snoozedUntil"] is None and woken["seq"] > snoozed["seq"]
    assert (await client.next_data("notification:unread-count"))["count"] == 1


async def test_bad_state_requests_are_refused(daemon: Daemon) -> None:
    client = await daemon.connect("bad")
    for kind, data in (
        ("notification:mark-seen", {}),
        ("notification:mark-seen", {"ids": [1], "all": True}),
        ("notification:archive", {"all": False}),
        ("notification:archive", {"ids": [1], "category": "billing"}),
        ("notification:unarchive", {"all": True, "category": ""}),
        ("notification:unarchive", {"all": True, "category": "x" * 65}),
        ("notification:snooze", {"ids": [1]}),
        ("notification:snooze", {"ids": [1], "until": "2020-01-01T00:00:00Z"}),
        ("notification:snooze", {"ids": [1], "until": "tomorrow"}),
        ("notification:snooze", {"ids": [1], "until": "2999-01-01T00:00:00"}),
        ("notification:mark-unread", {"ids": [1], "until": _later(60)}),
    ):
        reply = await client.request(kind, data, "notification:changed")
        assert reply["type"] == "error" and reply["data"]["code"] == "invalid-data", (kind, data)
    await asyncio.sleep(0)
    assert (await client.request("ping", {}, "pong"))["type"] == "pong"


async def test_shared_counts_are_those_of_a_recount_at_every_threshold(daemon: Daemon) -> None:
    """notifyd_private.alive, which counts a user's share of a shared stream from runs of 256
    and 65,536 seqs, against a plain count, at thresholds on either side of every kind of
    boundary, after deletions and category changes."""
    pool = await daemon.pool()
    insert = (
        "INSERT INTO notifyd.notifications (stream, type, category) "
        "SELECT 'all', 't', CASE WHEN g % 3 = 0 THEN 'billing' END FROM generate_series(1, $1) g"
    )
    # seqs 1 to 600, then (the stream's counter moved on, as by 65,000 items since pruned) up
    # to either side of 65,536
    await pool.execute(insert, 600)
    await pool.execute("UPDATE notifyd.streams SET last_seq = 65300 WHERE stream = 'all'")
    await pool.execute(insert, 700)
    await pool.execute("DELETE FROM notifyd.notifications WHERE stream = 'all' AND dseq % 7 = 0")
    await pool.execute(
        "UPDATE notifyd.notifications SET category = 'billing' "
        "WHERE stream = 'all' AND dseq % 11 = 0 AND category IS NULL"
    )
    thresholds = sorted(
        {0, 1, 127, 128, 255, 256, 257, 383, 384, 599, 600, 32768, 65300, 65301, 65407, 65408}
        | {65535, 65536, 65537, 65663, 65664, 65791, 65792, 65999, 66000, 70000}
        | {k * 37 % 600 for k in range(20)}
        | {65300 + k * 53 % 700 for k in range(20)}
    )
    wrong = await pool.fetch(
        "SELECT t, c, notifyd_private.alive('all', c, t) AS counted, "
        "(SELECT count(*) FROM notifyd.notifications n WHERE n.stream = 'all' AND n.dseq > t "
        " AND coalesce(n.category, '') = c) AS exact "
        "FROM unnest($1::bigint[]) t, unnest(ARRAY['', 'billing']) c",
        thresholds,
    )
    assert [dict(r) for r in wrong if r["counted"] != r["exact"]] == []
    assert len(wrong) == 2 * len(thresholds)


async def test_a_device_is_sent_only_the_marks_and_states_of_streams_it_receives(
    daemon: Daemon,
) -> None:
    """A mark names its stream, and a receipt carries the item: a device whose token lacks the
    role gets neither, live or in a sync. SQL with no streams marks the user's own and 'all'
    only (the database does not know the user's roles)."""
    staff = await daemon.connect("dee", ["secret-project"])
    plain = await daemon.connect("dee")
    nid = await daemon.sql("SELECT notifyd.notify_role('secret-project', 't', 'x', 'm')")
    await staff.next_data("notification:new")
    await staff.request("notification:mark-read", {"ids": [nid]}, "notification:read")
    await staff.request("notification:mark-all-read", {}, "notification:read")
    targets = [
        f["data"]["target"] for f in await staff.quiet(0.5) if f["type"] == "notification:marked"
    ]
    assert sorted(set(targets)) == ["all", "role:secret-project", "user:dee"]
    frames = await plain.quiet(0.3)
    assert {f["data"]["target"] for f in frames if f["type"] == "notification:marked"} == {
        "all",
        "user:dee",
    }
    assert not [f for f in frames if f["type"] == "notification:updated"]
    fresh = await daemon.connect("dee")
    synced = await fresh.sync({"user:dee": 0, "all": 0})
    assert {m["target"] for m in synced["marks"]} == {"all", "user:dee"}
    assert synced["notifications"] == []
    await daemon.sql("SELECT notifyd.mark_seen('erin')")
    assert await daemon.sql(
        "SELECT array_agg(DISTINCT stream ORDER BY stream) FROM notifyd.marks "
        "WHERE ustream = 'user:erin'"
    ) == ["all", "user:erin"]


async def test_counts_of_a_batch_are_each_users_counts(daemon: Daemon) -> None:
    """notifyd.counts_many(), which sums an untouched shared stream once for the whole batch,
    against notifyd.counts() user by user: users who never acted, who marked a stream, who
    hold a receipt, who archived a category, with own items or none, with the same stream
    asked twice in a batch and a stream nobody wrote to."""
    pool = await daemon.pool()
    await pool.execute(
        "INSERT INTO notifyd.notifications (stream, role, type, category) "
        "SELECT CASE WHEN g % 2 = 0 THEN 'all' ELSE 'role:staff' END, "
        "       CASE WHEN g % 2 = 1 THEN 'staff' END, 't', "
        "       CASE WHEN g % 3 = 0 THEN 'billing' WHEN g % 5 = 0 THEN 'ops' END "
        "FROM generate_series(1, 40) g"
    )
    await pool.execute(
        "INSERT INTO notifyd.notifications (user_id, type, category) "
        "SELECT 'own' || (g % 3), 't', CASE WHEN g % 2 = 0 THEN 'billing' END "
        "FROM generate_series(1, 12) g"
    )
    shared = await pool.fetch(
        "SELECT id FROM notifyd.notifications WHERE stream IN ('all', 'role:staff') ORDER BY id"
    )
    theirs = "ARRAY['user:' || $1, 'all', 'role:staff']"
    ids = [shared[3]["id"], shared[4]["id"], shared[5]["id"]]
    await pool.execute(f"SELECT notifyd.mark_read($1, NULL, streams => {theirs})", "marker")
    await pool.execute(f"SELECT notifyd.archive($1, NULL, 'billing', {theirs})", "archiver")
    await pool.execute(f"SELECT notifyd.mark_seen($1, $2, streams => {theirs})", "receipt", ids[:1])
    await pool.execute(
        f"SELECT notifyd.snooze($1, $2, now() + interval '1 hour', streams => {theirs})",
        "snoozer",
        ids[1:],
    )
    await pool.execute(f"SELECT notifyd.mark_read($1, NULL, streams => {theirs})", "own1")
    await pool.execute(
        "INSERT INTO notifyd.notifications (stream, type) VALUES ('all', 't'), ('all', 't')"
    )
    users = ["never", "marker", "archiver", "receipt", "snoozer", "own0", "own1", "own2"]
    asked = [(f"user:{u}", [f"user:{u}", "all", "role:staff", "role:nobody"]) for u in users] + [
        ("user:never", ["user:never", "all"])
    ]

    def tally(rows: list[Any]) -> dict[str, tuple[int, dict[str, tuple[int, int]]]]:
        out: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
        for r in rows:
            _, per = out.setdefault(r["stream"], (r["last_seq"], {}))
            unread, unseen = per.get(r["category"], (0, 0))
            per[r["category"]] = (unread + r["unread"], unseen + r["unseen"])
        return {
            s: (head, {c: n for c, n in per.items() if n != (0, 0)})
            for s, (head, per) in out.items()
        }

    many = await pool.fetch(
        "SELECT * FROM notifyd.counts_many($1::text::jsonb)",
        json.dumps([[viewer, streams] for viewer, streams in asked]),
    )
    for i, (viewer, streams) in enumerate(asked, 1):
        one = await pool.fetch("SELECT * FROM notifyd.counts($1, $2)", viewer, streams)
        assert tally([r for r in many if r["i"] == i]) == tally(one), viewer
        assert set(tally(one)) == set(streams)
    # the cases differ: the comparison is not between empty answers
    assert len({str(tally([r for r in many if r["i"] == i])) for i in range(1, 9)}) >= 6
