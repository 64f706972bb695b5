# The LISTEN connection dies (pg_terminate_backend): the daemon notices, says not ready,
# reconnects, catches up from the table, and connected clients get every seq once, in order.
from __future__ import annotations

import asyncio

from support import Daemon


async def test_terminated_listener_reconnects_and_catches_up(daemon: Daemon) -> None:
    client = await daemon.connect("l1")
    await daemon.notify("l1", "before")
    assert (await client.next_data("notification:new"))["notification"]["seq"] == 1
    stop = asyncio.Event()
    written = 1

    async def writer() -> None:
        nonlocal written
        while not stop.is_set():
            await daemon.notify("l1", "during")
            written += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(writer())
    saw_not_ready = False
    for _ in range(3):
        await asyncio.sleep(0.1)
        pid = daemon.app.listener.backend_pid
        await daemon.sql("SELECT pg_terminate_backend($1)", pid)
        for _ in range(200):
            if not daemon.app.ready:
                saw_not_ready = True
            if daemon.app.listener.up and daemon.app.listener.backend_pid != pid:
                break
            await asyncio.sleep(0.01)
    stop.set()
    await task
    seqs = [1]
    while seqs[-1] < written:
        seqs.append((await client.next_data("notification:new", 10))["notification"]["seq"])
    assert seqs == list(range(1, written + 1))
    assert not [f for f in await client.quiet(0.3) if f["type"] == "notification:new"]
    assert daemon.app.listener.reconnects >= 3
    assert saw_not_ready
