# Abuse limits and access revocation: the per-connection rate limit (error, then 1008) on
# every client frame, control frames and fragments included; the send bound on every byte
# written, pongs too; the closing grace; the per-user connection cap (429 at the handshake,
# 1008 after an auth frame); and notifyd.revoke_user() closing live connections on every
# process with 4003 and refusing tokens issued before it, also after a restart.
from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from faults_support import eventually
from support import Daemon, running_daemon
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from wire_support import CONT, PING, PONG, TEXT, WireClient, frame, text

from notifyd.core.codes import CloseCode
from notifyd.edge.server import Connection


async def test_rate_limit_errors_then_closes_with_1008(fresh_db: str) -> None:
    async with running_daemon(fresh_db, rate_limit=5, rate_burst=5) as d:
        polite = await d.connect("r-polite")
        flooder = await d.connect("r-flood")
        for i in range(5):
            await flooder.send("ping", {"timestamp": i})
        for _ in range(5):
            await flooder.expect("pong")
        await flooder.send("ping", {"timestamp": 99}, ref="over")
        error = await flooder.expect("error")
        assert error["data"]["code"] == "rate-limited"
        for i in range(10):  # keeps flooding while refused
            await flooder.send("ping", {"timestamp": i})
        code, reason = await flooder.closed()
        assert code == CloseCode.POLICY_VIOLATION and "rate" in (reason or "")
        await d.notify("r-polite", "unaffected")
        assert (await polite.next_data("notification:new"))["notification"]["title"] == "unaffected"
        await asyncio.sleep(0.3)  # the polite client's bucket refills; it is never refused
        assert (await polite.request("ping", {}, "pong"))["type"] == "pong"


async def test_connections_per_user_are_capped(fresh_db: str) -> None:
    async with running_daemon(fresh_db, max_connections_per_user=2) as d:
        await d.connect("cap")
        await d.connect("cap")
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{d.url}?token={d.token('cap')}")
        assert info.value.response.status_code == 429
        framed = await d.raw()
        await framed.send("auth", {"token": d.token("cap")})
        code, reason = await framed.closed()
        assert code == CloseCode.POLICY_VIOLATION and "too many" in (reason or "")
        assert (await d.connect("other")) is not None  # other users are not affected


async def test_revoke_user_closes_on_every_process_and_refuses_old_tokens(
    fresh_db: str,
) -> None:
    async with running_daemon(fresh_db) as one, running_daemon(fresh_db) as two:
        old_token = one.token("blocked")
        devices = [await one.connect("blocked"), await two.connect("blocked")]
        bystander = await two.connect("fine")
        started = time.monotonic()
        await one.sql("SELECT notifyd.revoke_user('blocked')")
        for device in devices:
            code, reason = await device.closed(timeout=2)
            assert code == CloseCode.REVOKED and reason == "access revoked"
        assert time.monotonic() - started < 2
        for daemon in (one, two):
            with pytest.raises(InvalidStatus) as info:
                await connect(f"{daemon.url}?token={old_token}")
            assert info.value.response.status_code == 401
        # a token issued after the revocation is accepted
        fresh = one.token("blocked", iat=int(time.time()) + 2)
        client = await one.raw(f"?token={fresh}")
        assert (await client.next_data("connection-confirmed"))["userId"] == "blocked"
        assert (await bystander.request("ping", {}, "pong"))["type"] == "pong"
    # a daemon started later knows the revocation from the table
    async with running_daemon(fresh_db) as three:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{three.url}?token={old_token}")
        assert info.value.response.status_code == 401


async def test_revoked_refresh_and_auth_frame_are_refused(daemon: Daemon) -> None:
    live = await daemon.connect("rv")
    old = daemon.token("rv")
    await daemon.sql("SELECT notifyd.revoke_user('rv')")
    assert (await live.closed())[0] == CloseCode.REVOKED
    framed = await daemon.raw()
    await framed.send("auth", {"token": old})
    code, reason = await framed.closed()
    assert code == CloseCode.UNAUTHORIZED and "revoked" in (reason or "")
    newer = await daemon.raw(f"?token={daemon.token('rv', iat=int(time.time()) + 2)}")
    await newer.expect("connection-confirmed")
    reply = await newer.request("auth", {"token": old}, "auth:refreshed")
    assert reply["data"]["code"] == "auth-failed"


async def test_revoke_user_needs_a_user(daemon: Daemon) -> None:
    import asyncpg

    with pytest.raises(asyncpg.CheckViolationError):
        await daemon.sql("SELECT notifyd.revoke_user('')")


def conn_of(d: Daemon, client: WireClient) -> Connection:
    return next(c for c in d.app.connections if c.peer().endswith(f":{client.local_port}"))


async def test_a_ping_flood_from_a_client_that_never_reads_is_closed(fresh_db: str) -> None:
    """Pings take tokens like data frames: an unauthenticated client flooding them, reading
    nothing, is refused pongs and closed with 1008; what waits for it stays within the
    bound, and another client is served meanwhile."""
    async with running_daemon(fresh_db) as d:
        polite = await d.connect("p-polite")
        flooder = await WireClient.open(d.app.port)
        try:
            conn = conn_of(d, flooder)
            most = await _flood_pings(conn, flooder, 100)  # up to 13 MB of pings
            assert (
                conn.ws.close_sent is not None
                and conn.ws.close_sent.code == CloseCode.POLICY_VIOLATION
            )
            assert most <= d.settings.max_send_buffer + 256
            await d.notify("p-polite", "served")
            assert (await polite.next_data("notification:new"))["notification"]["title"] == "served"
        finally:
            flooder.abort()


async def _flood_pings(conn: Connection, flooder: WireClient, rounds: int) -> int:
    """Bursts of 1,000 pings (131 kB) that the client never reads the answers of, until the
    server closes or `rounds` bursts went; returns the most bytes the server held for it."""
    burst = frame(PING, b"p" * 125) * 1000
    most = 0
    for _ in range(rounds):
        if conn.ws.close_sent is not None or conn.transport is None:
            break
        flooder.send(burst)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flooder.drain(), 1)
        if conn.transport is not None:
            most = max(most, conn.queued + conn.transport.get_write_buffer_size())
    return most


async def test_pongs_count_against_the_send_bound(fresh_db: str) -> None:
    """Without a rate limit in the way, the pongs of a client that does not read are held
    to the send bound like any frame: it is closed with 4008."""
    async with running_daemon(
        fresh_db, rate_limit=100000.0, rate_burst=100000, max_send_buffer=65536
    ) as d:
        flooder = await WireClient.open(d.app.port, f"?token={d.token('p1')}")
        try:
            await eventually(lambda: bool(d.app.index.subscribers("user:p1")), 10, "live")
            conn = conn_of(d, flooder)
            most = await _flood_pings(conn, flooder, 200)
            assert conn.ws.close_sent is not None and conn.ws.close_sent.code == CloseCode.TOO_SLOW
            assert most <= 65536 + 256
        finally:
            flooder.abort()


async def test_refused_pings_get_no_pong(fresh_db: str) -> None:
    async with running_daemon(fresh_db, rate_limit=5, rate_burst=5) as d:
        client = await WireClient.open(d.app.port, f"?token={d.token('p2')}")
        try:
            await client.read_until(lambda c: len(c.texts) >= 2, 10)  # greeting and count
            client.send(frame(PING, b"1") * 9)  # 5 allowed, 4 refused: no close yet
            await asyncio.sleep(0.3)  # the bucket refills a token...
            client.send(text({"type": "ping", "ref": "after"}))  # ... for this one
            await client.read_until(lambda c: len(c.texts) >= 3, 10)
            await asyncio.sleep(0.2)
            await client.read_some()
            assert [op for op, _ in client.frames].count(PONG) == 5
            assert client.texts[2]["type"] == "pong" and client.texts[2]["ref"] == "after"
            assert client.close_code is None
        finally:
            client.close()


async def test_fragments_take_tokens_too(fresh_db: str) -> None:
    """A message that never ends, in tiny fragments, is no way around the rate limit."""
    async with running_daemon(fresh_db, rate_limit=5, rate_burst=5) as d:
        client = await WireClient.open(d.app.port, f"?token={d.token('p3')}")
        try:
            client.send(frame(TEXT, b"[", fin=False) + frame(CONT, b" ", fin=False) * 200)
            await client.read_until(lambda c: c.close_code is not None, 10)
            assert client.close_code == CloseCode.POLICY_VIOLATION
        finally:
            client.close()


async def test_a_refused_frame_is_answered_with_its_ref(fresh_db: str) -> None:
    """`rate-limited` carries the refused frame's ref, like every reply; a frame that is not
    a JSON object with a valid ref has none to give."""
    async with running_daemon(fresh_db, rate_limit=0.1, rate_burst=3) as d:
        client = await WireClient.open(d.app.port, f"?token={d.token('p4')}")
        try:
            client.send(
                b"".join(text({"type": "ping", "ref": f"p{i}"}) for i in range(3))
                + text({"type": "ping", "ref": "refused"})  # the bucket is empty
                + frame(TEXT, b"not json")
            )
            await client.read_until(lambda c: len(c.texts) >= 7, 10)
            replies = [t for t in client.texts if t["type"] in ("pong", "error")]
            assert [r.get("ref") for r in replies[:3]] == ["p0", "p1", "p2"]
            assert replies[3]["data"]["code"] == "rate-limited"
            assert replies[3]["ref"] == "refused"
            assert replies[4]["data"]["code"] == "rate-limited" and "ref" not in replies[4]
            assert client.close_code is None
        finally:
            client.close()
