# Many processes: several `notifyd serve` subprocesses sharing one port (SO_REUSEPORT) or on
# their own ports, one PostgreSQL and one Redis. Delivery and mark-read across processes,
# cluster-wide presence, a killed process's users going offline within the TTL, and Redis
# restarted or down. Everything here is real: processes, sockets, PostgreSQL and Redis.
from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from faults_support import ServeProcess, eventually, http_get
from redis_support import RedisServer
from support import SECRET, Client, free_port
from websockets.asyncio.client import connect

from notifyd.core.auth import issue_token


async def live(port: int, user: str, roles: Iterable[str] = ()) -> Client:
    """A live client on `port`; `client.cid` is its connection id."""
    token = issue_token(SECRET, user, list(roles), 3600)
    ws = await connect(
        f"ws://127.0.0.1:{port}/ws?token={token}",
        compression=None,
        ping_interval=None,
        open_timeout=10,
    )
    client = Client(ws)
    confirmed = await client.next_data("connection-confirmed")
    client.cid = confirmed["connectionId"]  # type: ignore[attr-defined]
    await client.expect("notification:unread-count")
    return client


async def presence_state(client: Client, ref: str, **query: Any) -> dict[str, Any]:
    reply = await client.request("presence:query", query, "presence:state", ref=ref)
    assert reply["type"] == "presence:state", reply
    data: dict[str, Any] = reply["data"]
    return data


def users_of(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["userId"]: u for u in state["users"]}


async def presence_events(client: Client, seconds: float) -> list[dict[str, Any]]:
    return [f for f in await client.quiet(seconds) if f["type"].startswith("presence:")]


@contextlib.asynccontextmanager
async def cluster(
    dsn: str, tmp_path: Path, count: int, shared_port: bool = False, **env: str
) -> AsyncIterator[list[ServeProcess]]:
    port = free_port()
    if shared_port:
        env["NOTIFYD_REUSE_PORT"] = "1"
    nodes = []
    for i in range(count):
        log_dir = tmp_path / f"node{i}"
        log_dir.mkdir()
        nodes.append(ServeProcess(dsn, port if shared_port else free_port(), log_dir, **env))
    try:
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def node_of(nodes: list[ServeProcess], client: Client) -> int:
    cid = client.cid  # type: ignore[attr-defined]
    for i, node in enumerate(nodes):
        if f'"msg":"connection open","conn":"{cid}"' in node.log_path.read_text():
            return i
    raise AssertionError(f"no process logged connection {cid}")


async def test_processes_share_a_port_and_each_client_gets_its_own(
    fresh_db: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with cluster(
        fresh_db,
        tmp_path,
        3,
        shared_port=True,
        NOTIFYD_REDIS_URL=redis_url,
        NOTIFYD_REDIS_PREFIX=redis_prefix,
    ) as nodes:
        port = nodes[0].port
        clients = {f"u{i}": await live(port, f"u{i}", ["staff"]) for i in range(24)}
        spread = {node_of(nodes, c) for c in clients.values()}
        assert len(spread) >= 2, "SO_REUSEPORT spread 24 connections over one process only"
        # Devices of one user until two of them sit on different processes.
        devices = [await live(port, "multi")]
        while len({node_of(nodes, d) for d in devices}) < 2:
            assert len(devices) < 40, "40 connections all landed on one process"
            devices.append(await live(port, "multi"))

        db = await asyncpg.connect(fresh_db)
        try:
            for user in clients:
                await db.execute("SELECT notifyd.notify($1, 'test', $1, 'm')", user)
            await db.execute("SELECT notifyd.notify_role('staff', 'test', 'to staff', 'm')")
            nid = await db.fetchval("SELECT notifyd.notify('multi', 'test', 'mine', 'm')")
        finally:
            await db.close()
        for user, client in clients.items():
            got = [(await client.next_data("notification:new"))["notification"] for _ in range(2)]
            assert sorted(n["title"] for n in got) == sorted([user, "to staff"])
            assert not [f for f in await client.quiet(0.05) if f["type"] == "notification:new"]
        for device in devices:
            assert (await device.next_data("notification:new"))["notification"]["id"] == nid
        # Mark-read on one process reaches the user's devices on the others.
        reader = devices[0]
        await reader.request("notification:mark-read", {"ids": [nid]}, "notification:read")
        elsewhere = [d for d in devices if node_of(nodes, d) != node_of(nodes, reader)]
        assert elsewhere
        for device in elsewhere:
            changed = (await device.next_data("notification:updated"))["notification"]
            assert (changed["id"], changed["read"]) == (nid, True)
            counts = [
                f["data"]["count"] for f in device.seen if f["type"] == "notification:unread-count"
            ]
            while counts[-1] != 0:  # 1 after the new one, then 0 after the read
                counts.append((await device.next_data("notification:unread-count"))["count"])


async def test_presence_is_cluster_wide(
    fresh_db: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with cluster(
        fresh_db,
        tmp_path,
        3,
        NOTIFYD_REDIS_URL=redis_url,
        NOTIFYD_REDIS_PREFIX=redis_prefix,
        NOTIFYD_PRESENCE_PUBLIC_ROLES="doctor",
    ) as nodes:
        a, b, c = (n.port for n in nodes)
        admin = await live(a, "boss", ["admin"])
        doc_b = await live(b, "doc", ["doctor"])
        online = await admin.next_data("presence:online")
        assert online["userId"] == "doc" and online["roles"] == ["doctor"]
        doc_c = await live(c, "doc", ["doctor"])
        nurse = await live(c, "nurse1", ["nurse"])
        assert (await admin.next_data("presence:online"))["userId"] == "nurse1"
        assert await presence_events(admin, 0.3) == []  # doc's 2nd device changes nothing

        state = await presence_state(
            admin, "q1", userIds=["doc", "nurse1", "ghost"], roles=["doctor", "nurse", "admin"]
        )
        users = users_of(state)
        assert users["doc"]["online"] and users["nurse1"]["online"]
        assert users["ghost"] == {"userId": "ghost", "online": False, "lastSeen": None}
        assert state["roles"] == {"doctor": 1, "nurse": 1, "admin": 1}

        # A patient may see doctors (a public role), and nobody else.
        patient = await live(a, "pat", ["patient"])
        assert (await admin.next_data("presence:online"))["userId"] == "pat"
        state = await presence_state(patient, "q2", userIds=["doc", "nurse1"], roles=["doctor"])
        assert users_of(state)["doc"]["online"] is True
        assert users_of(state)["nurse1"] == {"userId": "nurse1", "online": False, "lastSeen": None}
        assert state["roles"] == {"doctor": 1}
        refused = await patient.request(
            "presence:query", {"roles": ["nurse"]}, "presence:state", ref="q3"
        )
        assert refused["type"] == "error" and refused["data"]["code"] == "forbidden"
        assert await presence_events(patient, 0.1) == []  # patients are not watchers

        await doc_b.close()
        assert await presence_events(admin, 0.5) == []  # still on process c
        await doc_c.close()
        offline = await admin.next_data("presence:offline")
        assert offline["userId"] == "doc" and offline["roles"] == ["doctor"]
        state = await presence_state(admin, "q4", userIds=["doc"], roles=["doctor"])
        assert users_of(state)["doc"]["online"] is False
        assert users_of(state)["doc"]["lastSeen"] is not None
        assert state["roles"] == {"doctor": 0}
        # The patient, no watcher, was told none of these comings and goings.
        assert [
            f
            for f in patient.seen
            if f["type"].startswith("presence:") and f["type"] != "presence:state"
        ] == []
        await nurse.close()
        assert (await admin.next_data("presence:offline"))["userId"] == "nurse1"


async def test_a_killed_process_takes_its_users_offline_within_the_ttl(
    fresh_db: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    ttl = 2.0
    async with cluster(
        fresh_db,
        tmp_path,
        2,
        NOTIFYD_REDIS_URL=redis_url,
        NOTIFYD_REDIS_PREFIX=redis_prefix,
        NOTIFYD_PRESENCE_TTL=str(ttl),
    ) as (node_a, node_b):
        admin = await live(node_a.port, "boss", ["admin"])
        only_b = [await live(node_b.port, f"b{i}") for i in range(3)]
        both = [await live(node_b.port, "both"), await live(node_a.port, "both")]
        came = {(await admin.next_data("presence:online"))["userId"] for _ in range(4)}
        assert came == {"b0", "b1", "b2", "both"}
        await asyncio.sleep(ttl)  # several heartbeats: it is not the first one that counts

        await node_b.kill9()
        killed = time.monotonic()
        went = {
            (await admin.next_data("presence:offline", timeout=ttl + 2))["userId"] for _ in only_b
        }
        elapsed = time.monotonic() - killed
        print(f"offline {elapsed:.2f}s after kill -9 (TTL {ttl}s)")
        assert went == {"b0", "b1", "b2"}
        assert elapsed <= ttl, f"offline {elapsed:.2f}s after kill -9, TTL {ttl}s"
        assert await presence_events(admin, 0.5) == []  # "both" still has a device on a
        state = await presence_state(admin, "q", userIds=["b0", "both"])
        assert not users_of(state)["b0"]["online"] and users_of(state)["both"]["online"]
        assert "dropped 1 presence nodes" in node_a.log_path.read_text()
        del both


async def test_redis_restarted_presence_is_rebuilt_from_live_connections(
    fresh_db: str, tmp_path: Path, private_redis: RedisServer
) -> None:
    async with cluster(
        fresh_db, tmp_path, 2, NOTIFYD_REDIS_URL=private_redis.url, NOTIFYD_PRESENCE_TTL="2"
    ) as (node_a, node_b):
        admin = await live(node_a.port, "boss", ["admin"])
        worker = await live(node_b.port, "worker", ["staff"])
        assert (await admin.next_data("presence:online"))["userId"] == "worker"

        private_redis.kill()
        private_redis.start()  # empty: it kept nothing

        async def rebuilt() -> bool:
            state = await presence_state(
                admin, f"q{time.monotonic()}", userIds=["worker"], roles=["staff"]
            )
            return bool(users_of(state)["worker"]["online"]) and state["roles"] == {"staff": 1}

        deadline = time.monotonic() + 10
        while not await rebuilt():
            assert time.monotonic() < deadline, "presence not rebuilt after a Redis restart"
            await asyncio.sleep(0.2)
        admin.drop_backlog()
        # Changes flow across processes again.
        late = await live(node_b.port, "late")
        assert await wait_presence(admin, "presence:online", "late")
        await late.close()
        assert await wait_presence(admin, "presence:offline", "late")
        logs = node_a.log_path.read_text() + node_b.log_path.read_text()
        assert "Redis failed" in logs and "presence is cluster-wide again" in logs
        await worker.close()


async def wait_presence(client: Client, kind: str, user: str, timeout: float = 5) -> bool:
    """Skips presence events of others (a rebuilt cluster may repeat who is online)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await client.recv(max(0.01, deadline - time.monotonic()))
        if frame["type"] == kind and frame["data"]["userId"] == user:
            return True


async def test_redis_down_presence_degrades_to_local_and_notifications_flow(
    fresh_db: str, tmp_path: Path, private_redis: RedisServer
) -> None:
    async with cluster(
        fresh_db, tmp_path, 2, NOTIFYD_REDIS_URL=private_redis.url, NOTIFYD_PRESENCE_TTL="2"
    ) as (node_a, node_b):
        admin = await live(node_a.port, "boss", ["admin"])
        remote = await live(node_b.port, "remote")
        assert (await admin.next_data("presence:online"))["userId"] == "remote"
        status, body = await http_get(node_a.port, "/metrics")
        assert status == 200 and b"notifyd_presence_redis_up 1.0" in body

        private_redis.kill()
        await eventually(
            lambda: "Redis failed" in node_a.log_path.read_text(),
            10,
            "node a logs that Redis is down",
        )
        status, body = await http_get(node_a.port, "/metrics")
        assert b"notifyd_presence_redis_up 0.0" in body
        assert b"notifyd_presence_redis_errors_total 0.0" not in body

        # Notifications do not depend on Redis.
        db = await asyncpg.connect(fresh_db)
        try:
            nid = await db.fetchval("SELECT notifyd.notify('remote', 'test', 'still', 'm')")
        finally:
            await db.close()
        assert (await remote.next_data("notification:new"))["notification"]["id"] == nid
        await remote.close()  # while Redis is down: only b's own watchers could be told
        # Presence is local to each process: a user on a's own process is seen, with events.
        local = await live(node_a.port, "local")
        assert await wait_presence(admin, "presence:online", "local")
        state = await presence_state(admin, "q1", userIds=["local"])
        assert users_of(state)["local"]["online"] is True

        private_redis.start()
        await eventually(
            lambda: "presence is cluster-wide again" in node_a.log_path.read_text(),
            10,
            "node a is back on Redis",
        )
        # a's watchers learn what they missed meanwhile.
        assert await wait_presence(admin, "presence:offline", "remote")
        late = await live(node_b.port, "late")
        assert await wait_presence(admin, "presence:online", "late")
        state = await presence_state(admin, "q2", userIds=["remote", "local", "late"])
        assert [u["online"] for u in state["users"]] == [False, True, True], state
        await local.close()
        await late.close()


async def test_a_stopped_process_takes_its_users_offline_at_once(
    fresh_db: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with cluster(
        fresh_db, tmp_path, 2, NOTIFYD_REDIS_URL=redis_url, NOTIFYD_REDIS_PREFIX=redis_prefix
    ) as (node_a, node_b):
        admin = await live(node_a.port, "boss", ["admin"])
        await live(node_b.port, "leaving", ["staff"])
        assert (await admin.next_data("presence:online"))["userId"] == "leaving"
        assert node_b.proc is not None
        node_b.proc.send_signal(signal.SIGTERM)  # the TTL is 30 s: this must not wait for it
        offline = await admin.next_data("presence:offline", timeout=3)
        assert offline["userId"] == "leaving" and offline["roles"] == ["staff"]
        assert await asyncio.to_thread(node_b.proc.wait, 10) == 0
        state = await presence_state(admin, "q", userIds=["leaving"], roles=["staff"])
        assert state["roles"] == {"staff": 0} and not state["users"][0]["online"]


async def test_a_lost_subscription_is_noticed_and_restored(
    fresh_db: str, tmp_path: Path, private_redis: RedisServer
) -> None:
    async with cluster(
        fresh_db, tmp_path, 2, NOTIFYD_REDIS_URL=private_redis.url, NOTIFYD_PRESENCE_TTL="2"
    ) as (node_a, node_b):
        admin = await live(node_a.port, "boss", ["admin"])
        killer = aioredis.from_url(private_redis.url)
        try:
            # redis-py leaves execute_command unannotated
            killed = await killer.execute_command(  # type: ignore[no-untyped-call]
                "CLIENT", "KILL", "TYPE", "pubsub"
            )
            assert killed >= 2
        finally:
            await killer.aclose()
        await eventually(
            lambda: "presence is cluster-wide again" in node_a.log_path.read_text(),
            10,
            "node a subscribed again",
        )
        late = await live(node_b.port, "late")
        assert await wait_presence(admin, "presence:online", "late")
        await late.close()
        assert await wait_presence(admin, "presence:offline", "late")
