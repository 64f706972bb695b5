# WebSocket keepalive from the single timer: an idle connection gets a ping; a client that
# never answers is closed (1011) after the ping timeout; one that answers stays open.
from __future__ import annotations

import asyncio
import time

from support import running_daemon
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from notifyd.hub import TICK_BATCH


async def raw_client(url: str) -> tuple[ClientProtocol, asyncio.StreamReader, asyncio.StreamWriter]:
    """A sans-I/O client over a bare socket: it answers nothing unless we flush its writes."""
    uri = parse_uri(url)
    reader, writer = await asyncio.open_connection(uri.host, uri.port)
    proto = ClientProtocol(uri)
    proto.send_request(proto.connect())
    for chunk in proto.data_to_send():
        writer.write(chunk)
    return proto, reader, writer


async def frames_until(
    proto: ClientProtocol, reader: asyncio.StreamReader, opcode: Opcode, timeout: float
) -> list[Frame]:
    seen: list[Frame] = []
    async with asyncio.timeout(timeout):
        while not any(f.opcode is opcode for f in seen):
            data = await reader.read(65536)
            if not data:
                proto.receive_eof()
                break
            proto.receive_data(data)
            seen.extend(e for e in proto.events_received() if isinstance(e, Frame))
    return seen


async def test_unanswered_keepalive_ping_closes_with_1011(fresh_db: str) -> None:
    async with running_daemon(fresh_db, ping_interval=0.3, ping_timeout=0.5) as d:
        proto, reader, writer = await raw_client(f"{d.url}?token={d.token('k1')}")
        seen = await frames_until(proto, reader, Opcode.PING, 5)
        assert any(f.opcode is Opcode.PING for f in seen)
        seen = await frames_until(proto, reader, Opcode.CLOSE, 5)  # we never answer the ping
        close = next(f for f in seen if f.opcode is Opcode.CLOSE)
        assert int.from_bytes(close.data[:2], "big") == 1011
        writer.close()


async def test_answered_pings_keep_the_connection(fresh_db: str) -> None:
    async with running_daemon(fresh_db, ping_interval=0.3, ping_timeout=0.5) as d:
        client = await d.connect("k2")  # the websockets client answers pings by itself
        await asyncio.sleep(2.5)
        assert (await client.request("ping", {}, "pong"))["type"] == "pong"


async def test_connections_due_together_are_checked_a_batch_per_turn(fresh_db: str) -> None:
    """Tokens issued together expire together: the timer checks at most TICK_BATCH of the
    connections due per call (the loop delivers between calls) and, call by call, all."""
    async with running_daemon(fresh_db) as d:
        n = 2 * TICK_BATCH + 10
        clients = [await d.connect(f"b{i}") for i in range(n)]
        loop = asyncio.get_running_loop()
        later, wall = loop.time() + 7200, time.time() + 7200  # every token (an hour) expired
        left = [len(d.app.connections)]
        while d.app.hub.tick(later, wall, TICK_BATCH):
            left.append(len(d.app.connections))
        left.append(len(d.app.connections))
        assert left == [n, n - TICK_BATCH, n - 2 * TICK_BATCH, 0]
        for client in (clients[0], clients[-1]):
            code, reason = await client.closed(timeout=5)
            assert code == 4001 and reason == "token expired"
