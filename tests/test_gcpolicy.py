# The cycle collector's policy (notifyd.ops.gcpolicy): full collections freeze what survived them,
# a thaw on schedule gives frozen objects back, and what makes freezing safe for a server whose
# connections come and go: a closed connection leaves no reference cycle, so it is freed while
# frozen, by reference counting.
from __future__ import annotations

import asyncio
import gc
import time
import weakref

from support import Daemon, http_request
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from notifyd.core.session import Session
from notifyd.edge.server import Connection
from notifyd.ops.gcpolicy import FreezeAfterFullCollections


class _Node:
    other: object = None


def test_full_collections_freeze_what_survived_and_a_thaw_gives_it_back() -> None:
    assert gc.get_freeze_count() == 0
    now = [0.0]
    policy = FreezeAfterFullCollections(thaw_every=60, clock=lambda: now[0])
    policy.install()
    try:
        gc.collect(1)
        assert gc.get_freeze_count() == 0  # only full collections freeze
        node = _Node()
        node.other = node  # a cycle, alive for now
        dead = weakref.ref(node)
        gc.collect()
        assert gc.get_freeze_count() > 0 and policy.freezes == 1
        del node  # cyclic garbage, but frozen: full collections do not see it
        gc.collect()
        assert dead() is not None and policy.freezes == 2
        now[0] = 61.0
        gc.collect()  # the thaw, after a collection that did not see the frozen objects
        assert gc.get_freeze_count() == 0 and policy.thaws == 1 and dead() is not None
        gc.collect()  # the next full collection sees everything again, and freezes again
        assert dead() is None and gc.get_freeze_count() > 0
    finally:
        policy.uninstall()
    assert gc.get_freeze_count() == 0 and policy._collected not in gc.callbacks


def _server_side(objects: list[object]) -> list[str]:
    return [
        type(o).__qualname__
        for o in objects
        if type(o) in (Connection, Session, Protocol, ServerProtocol)
    ]  # not the client's


async def test_closed_connections_leave_no_cycles_while_frozen(daemon: Daemon) -> None:
    """WebSockets closed with a closing handshake and cut by the network, handshakes given up
    halfway and plain HTTP requests: none leaves an object to the cycle collector."""
    policy = FreezeAfterFullCollections()
    policy.install()
    gc.collect()  # start from a clean slate
    try:
        clients = [await daemon.connect(f"g{i}") for i in range(60)]
        await daemon.notify("g1", "one")
        assert (await clients[1].next_data("notification:new"))["notification"]["title"] == "one"
        gc.collect()  # the open connections are frozen now
        assert gc.get_freeze_count() > 0
        for i, client in enumerate(clients):
            if i % 2:
                await client.close()  # closing handshake
            else:
                client.ws.transport.abort()  # network failure: the server sees a reset
        for _ in range(10):  # gone halfway through the handshake request
            _, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            writer.close()
        for _ in range(5):  # plain HTTP requests
            assert (await http_request(daemon.app.port, "GET", "/healthz"))[0] == 200
        async with asyncio.timeout(10):
            while daemon.app.connections:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        daemon.clients.clear()
        # the timer wheel lets go of closed connections when their deadline comes round
        loop = asyncio.get_running_loop()
        daemon.app.hub.tick(loop.time() + 3600, time.time() + 3600)
    finally:
        policy.uninstall()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        left = _server_side(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
    alive = [o for o in gc.get_objects() if type(o) is Connection]
    assert alive == [], [gc.get_referrers(o) for o in alive[:1]]


async def test_a_handshake_protocol_frozen_before_the_upgrade_is_freed_by_it(
    daemon: Daemon,
) -> None:
    """A full collection while a connection waits for its request freezes the handshake
    protocol; the upgrade that replaces it frees it, frozen or not (no cycle left of it)."""
    policy = FreezeAfterFullCollections()
    policy.install()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
        await asyncio.sleep(0.1)  # accepted: its handshake protocol exists
        waiting = [weakref.ref(o) for o in gc.get_objects() if type(o) is ServerProtocol]
        assert len(waiting) == 1
        gc.collect()  # ... and is frozen now
        assert gc.get_freeze_count() > 0
        writer.write(
            (
                f"GET /ws?token={daemon.token('f1')} HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert waiting[0]() is None
        writer.close()
    finally:
        policy.uninstall()
