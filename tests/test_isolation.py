# No user ever receives, reads or marks a notification that is not theirs: live delivery,
# sync-requests naming other streams, and mark-read of other users' ids.
from __future__ import annotations

from support import Daemon


async def test_users_never_see_or_touch_each_others_notifications(daemon: Daemon) -> None:
    alice = await daemon.connect("alice", ["user"])
    bob = await daemon.connect("bob", ["user"])
    admin_only = await daemon.connect("carol", ["admin"])
    bob_ids = [await daemon.notify("bob", f"secret {i}") for i in range(3)]
    await daemon.sql("SELECT notifyd.notify_role('admin', 't', 'admins only', 'm')")
    for _ in bob_ids:
        await bob.next_data("notification:new")
    await admin_only.next_data("notification:new")

    # alice asks for bob's stream and the admin stream: refused, nothing sent
    for stream in ("user:bob", "role:admin", "user:"):
        reply = await alice.request(
            "notification:sync-request", {"cursors": {stream: 0}}, "notification:sync-response"
        )
        assert reply["type"] == "error" and reply["data"]["code"] == "forbidden"
    # her own sync never includes bob's rows
    mine = await alice.sync({})
    assert mine["notifications"] == []
    assert set(mine["cursors"]) == {"user:alice", "role:user", "all"}

    # alice marks bob's ids read: nothing changes, bob hears nothing
    reply = await alice.request("notification:mark-read", {"ids": bob_ids}, "notification:read")
    assert reply["data"] == {"ids": [], "readAt": None}
    await alice.request("notification:mark-all-read", {}, "notification:read", ref="all")
    assert (
        await daemon.sql(
            "SELECT count(*) FROM notifyd.notifications WHERE user_id = 'bob' AND read_at IS NULL"
        )
        == 3
    )
    assert not [f for f in await bob.quiet(0.3) if f["type"] == "notification:read"]

    # nothing of bob's or the admins' ever reached alice
    for frame in alice.seen:
        if frame["type"] == "notification:new":
            assert frame["data"]["notification"]["stream"] in ("user:alice", "role:user", "all")
        assert "secret" not in str(frame) and "admins only" not in str(frame)


async def test_similar_user_ids_do_not_collide(daemon: Daemon) -> None:
    one = await daemon.connect("1")
    eleven = await daemon.connect("11")
    spaced = await daemon.connect("1 ")
    await daemon.notify("11", "for eleven")
    assert (await eleven.next_data("notification:new"))["notification"]["title"] == "for eleven"
    for other in (one, spaced):
        assert not [f for f in await other.quiet(0.2) if f["type"] == "notification:new"]


async def test_presence_is_visible_to_presence_roles_only(daemon: Daemon) -> None:
    admin = await daemon.connect("boss", ["admin"])
    user = await daemon.connect("worker", ["user"])
    online = await admin.next_data("presence:online")
    assert online["userId"] == "worker" and online["roles"] == ["user"]
    state = await admin.request(
        "presence:query", {"userIds": ["worker", "ghost"]}, "presence:state"
    )
    users = {u["userId"]: u for u in state["data"]["users"]}
    assert users["worker"]["online"] is True and users["ghost"] == {
        "userId": "ghost",
        "online": False,
        "lastSeen": None,
    }
    refused = await user.request("presence:query", {"userIds": ["boss"]}, "presence:state")
    assert refused["data"]["code"] == "forbidden"
    await user.close()
    offline = await admin.next_data("presence:offline")
    assert offline["userId"] == "worker"
    state = await admin.request(
        "presence:query", {"userIds": ["worker"]}, "presence:state", ref="q2"
    )
    assert state["data"]["users"][0]["online"] is False
    assert state["data"]["users"][0]["lastSeen"] is not None
