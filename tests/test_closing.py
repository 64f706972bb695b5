# The closing handshake (RFC 6455 §7.1.1) as protocol/README.md §9 promises it: every close
# code the server sends arrives as a close frame at a client that keeps sending while it is
# closed (the server reads and discards until the client closes too, instead of closing its
# socket on unread data, which would send a reset that throws the close frame away); a client
# that stops reading is reset after the grace, its kernel send queue included; a slow client
# that reads gets its 4008; a frame larger than the send bound reaches a client that reads.
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from faults_support import eventually, logged_errors
from support import Daemon, running_daemon
from wire_support import PONG, TEXT, WireClient, close_frame, frame, server_sockets, text

from notifyd.core.codes import CloseCode
from notifyd.edge.server import CLOSE_GRACE, Connection

FLOOD = frame(PONG, b"p" * 125) * 100  # 13 kB of unsolicited pongs: nothing answers them
FILL_PONG = "t" * 8000


OPENED: list[WireClient] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


async def open_client(d: Daemon, user: str, ttl: float = 3600) -> tuple[WireClient, Connection]:
    client = await WireClient.open(d.app.port, f"?token={d.token(user, ttl=ttl)}")
    OPENED.append(client)
    await eventually(lambda: bool(d.app.index.subscribers(f"user:{user}")), 10, "live")
    return client, next(iter(d.app.index.subscribers(f"user:{user}")))


def fill(client: WireClient, pings: int) -> None:
    """Have the server write `pings` pongs of 8 kB that the client does not read yet: its
    receive window fills, and what the server writes next (its close frame) waits in the
    server's socket, where closing the socket on unread data would throw it away."""
    for i in range(pings):
        client.send(text({"type": "ping", "data": {"timestamp": FILL_PONG}, "ref": f"f{i}"}))


@contextlib.asynccontextmanager
async def sending(client: WireClient, chunk: bytes = FLOOD) -> AsyncIterator[None]:
    """The client keeps sending `chunk` (a few MB/s at most) for as long as the block runs."""

    async def flood() -> None:
        while not client.eof and not client.writer.is_closing():
            if client.writer.transport.get_write_buffer_size() < 1 << 20:
                client.send(chunk)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(flood())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def closed_by_server_while_sending(
    d: Daemon,
    client: WireClient,
    conn: Connection,
    trigger: Callable[[], Awaitable[Any]],
    chunk: bytes = FLOOD,
) -> None:
    """The client keeps sending and does not read until the server has closed the connection
    (`trigger` makes it close); then it reads slowly until the close frame, and the end."""
    async with sending(client, chunk):
        await trigger()
        await eventually(lambda: conn not in d.app.connections, 30, "the server closed")
        await client.read_until(lambda c: c.close_code is not None, 30, size=4096, pause=0.005)
    client.send(close_frame(client.close_code or 1000))
    await client.read_to_end(10)


async def check(client: WireClient, code: int) -> None:
    assert client.close_code == code, (client.close_code, client.reset, client.frames[-3:])
    assert client.frames[-1][0] == 0x8  # nothing after the close frame
    assert client.eof and not client.reset


@pytest.mark.parametrize("code", [1008, 1009, 1007, 4001, 4003, 4008, 1011])
async def test_every_close_reaches_a_client_that_keeps_sending(fresh_db: str, code: int) -> None:
    settings: dict[str, Any] = {"rate_limit": 100000.0, "rate_burst": 100000}
    if code == 1008:
        settings = {"rate_limit": 5.0, "rate_burst": 5}
    elif code == 4008:
        settings["max_send_buffer"] = 65536
    elif code == 1011:
        settings.update(ping_interval=0.3, ping_timeout=0.3)
    async with running_daemon(fresh_db, **settings) as d:
        with logged_errors() as errors:
            client, conn = await open_client(d, "c1", ttl=3 if code == 4001 else 3600)
            chunk = FLOOD

            async def trigger() -> None:
                pass

            fill(client, 5 if code == 1008 else 30)
            await client.drain()
            if code == 1008:  # the flood itself: pings beyond the rate
                chunk = text({"type": "ping", "ref": "over"}) * 50
            elif code == 1009:
                client.send(frame(TEXT, b"x" * (d.settings.max_frame_bytes + 1)))
            elif code == 1007:
                client.send(frame(TEXT, b'{"type": "ping", "ref": "\xff"}'))
            elif code == 4003:

                async def trigger() -> None:
                    await d.sql("SELECT notifyd.revoke_user('c1')")
            elif code == 4008:

                async def trigger() -> None:
                    while conn in d.app.connections:
                        await d.notify("c1", "big", data={"x": "y" * 20000})

            if code == 1011:  # silent, not answering the keepalive ping, until closed
                await eventually(lambda: conn not in d.app.connections, 30, "1011")
            await closed_by_server_while_sending(d, client, conn, trigger, chunk)
            await check(client, code)
        assert not errors, [r.getMessage() for r in errors]


async def test_shutdown_1001_reaches_a_client_that_keeps_sending(fresh_db: str) -> None:
    async with running_daemon(fresh_db, rate_limit=100000.0, rate_burst=100000) as d:
        client, conn = await open_client(d, "c2")
        fill(client, 30)
        await client.drain()
        stopping: asyncio.Task[None] | None = None

        async def stop() -> None:
            nonlocal stopping
            stopping = asyncio.create_task(d.app.stop(timeout=20))

        await closed_by_server_while_sending(d, client, conn, stop)
        assert stopping is not None
        await stopping
        await check(client, 1001)
        assert conn.transport is None  # the stop waited for the closing handshake


async def test_a_client_that_stops_reading_is_reset_with_its_kernel_queue(
    fresh_db: str,
) -> None:
    async with running_daemon(fresh_db, max_send_buffer=65536) as d:
        client, conn = await open_client(d, "s1")
        while conn in d.app.connections:
            await d.notify("s1", "big", data={"x": "y" * 20000})
        assert conn.ws.close_sent is not None and conn.ws.close_sent.code == CloseCode.TOO_SLOW
        # The server has given up on it; it must not keep what it queued, in the process or
        # in the kernel (an orphan socket in FIN-WAIT-1 with its send queue), for longer
        # than the grace: 2 s without progress once the client's window is full.
        await eventually(
            lambda: not server_sockets(d.app.port, client.local_port),
            4 * CLOSE_GRACE,
            "the server's socket is gone",
            interval=0.05,
        )
        assert conn.transport is None
        await client.read_to_end(10)
        assert client.reset  # the reset dropped what was queued, close frame included
        assert client.close_code is None
        bystander = await d.connect("s2")
        assert (await bystander.request("ping", {}, "pong"))["type"] == "pong"


async def test_a_slow_client_that_reads_gets_4008_last(fresh_db: str) -> None:
    async with running_daemon(fresh_db, max_send_buffer=65536) as d:
        client, conn = await open_client(d, "s3")

        async def insert() -> None:
            for i in range(300):
                if conn not in d.app.connections:
                    return
                await d.notify("s3", f"n{i}", data={"x": "y" * 20000})

        load = asyncio.create_task(insert())
        # reads about 200 kB/s: much slower than the notifications come
        await client.read_to_end(60, size=4096, pause=0.02)
        await load
        assert client.close_code == CloseCode.TOO_SLOW and client.frames[-1][0] == 0x8
        assert client.eof and not client.reset
        got = [t["data"]["notification"] for t in client.texts if t["type"] == "notification:new"]
        assert [n["seq"] for n in got] == list(range(1, len(got) + 1))  # whole, in order


async def test_a_frame_larger_than_the_send_bound_reaches_a_reading_client(
    fresh_db: str,
) -> None:
    async with running_daemon(fresh_db, max_send_buffer=65536) as d:
        client, conn = await open_client(d, "b1")
        huge = "z" * 6_000_000  # more than the bound and all a kernel socket buffer takes
        await d.notify("b1", "huge", data={"x": huge})

        def has(title: str) -> Callable[[WireClient], bool]:
            return lambda c: any(
                t["type"] == "notification:new" and t["data"]["notification"]["title"] == title
                for t in c.texts
            )

        await client.read_until(has("huge"), 60, size=65536, pause=0.002)
        await d.notify("b1", "after")
        await client.read_until(has("after"), 10)
        assert client.close_code is None and conn in d.app.connections
        new = [t["data"]["notification"] for t in client.texts if t["type"] == "notification:new"]
        assert [n["title"] for n in new] == ["huge", "after"]
        assert new[0]["data"] == {"x": huge}
        # and so does a sync-response holding it, on a connection made afterwards
        other = await d.raw(f"?token={d.token('b1')}", max_size=None)
        await other.expect("connection-confirmed")
        page = await other.sync({})
        assert [n["title"] for n in page["notifications"]] == ["huge"]  # alone: over a page
        assert page["hasMore"]
        page = await other.sync(page["cursors"])
        assert [n["title"] for n in page["notifications"]] == ["after"]
