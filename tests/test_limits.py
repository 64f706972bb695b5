# Abuse limits and access revocation: the per-connection rate limit (error, then 1008), the
# per-user connection cap (429 at the handshake, 1008 after an auth frame), and
# notifyd.revoke_user() closing live connections on every process with 4003 and refusing
# tokens issued before it, also after a restart.
from __future__ import annotations

import asyncio
import time

import pytest
from support import Daemon, running_daemon
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from notifyd.limits import TokenBucket, Verdict


def test_token_bucket() -> None:
    bucket = TokenBucket(burst=3, now=0.0)
    assert [bucket.take(1.0, 3, 0.0) for _ in range(3)] == [Verdict.ALLOW] * 3
    assert bucket.take(1.0, 3, 0.0) is Verdict.REFUSE
    assert bucket.take(1.0, 3, 1.0) is Verdict.ALLOW  # refilled one token
    assert bucket.take(1.0, 3, 1.0) is Verdict.REFUSE
    assert bucket.take(1.0, 3, 1.0) is Verdict.REFUSE
    assert bucket.take(1.0, 3, 1.0) is Verdict.CLOSE  # refused `burst` times in a row


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
        assert code == 1008 and "rate" in (reason or "")
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
        assert code == 1008 and "too many" in (reason or "")
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
            assert code == 4003 and reason == "access revoked"
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
    assert (await live.closed())[0] == 4003
    framed = await daemon.raw()
    await framed.send("auth", {"token": old})
    code, reason = await framed.closed()
    assert code == 4001 and "revoked" in (reason or "")
    newer = await daemon.raw(f"?token={daemon.token('rv', iat=int(time.time()) + 2)}")
    await newer.expect("connection-confirmed")
    reply = await newer.request("auth", {"token": old}, "auth:refreshed")
    assert reply["data"]["code"] == "auth-failed"


async def test_revoke_user_needs_a_user(daemon: Daemon) -> None:
    import asyncpg

    with pytest.raises(asyncpg.CheckViolationError):
        await daemon.sql("SELECT notifyd.revoke_user('')")
