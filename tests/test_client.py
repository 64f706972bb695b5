# notifyd.client (the Python client) against a real daemon: replay then live, dedupe across a
# daemon restart, mark-read from inside the event loop, 4003 ends it; and `notifyd tail`.
from __future__ import annotations

import asyncio
import subprocess

from faults_support import eventually
from support import ROOT, Daemon, free_port, notifyd_cmd, running_daemon, subprocess_env

from notifyd.client import Event, Ledger, NotifydClient


def test_ledger_dedupes_and_only_advances() -> None:  # the backoff: tests/units/test_backoff.py
    ledger = Ledger({"user:1": 5}, remember=2)
    n = [{"stream": "user:1", "seq": s} for s in (6, 7, 6, 8, 6)]
    assert [ledger.admit(x) for x in n] == [True, True, False, True, True]  # remembers 2
    ledger.advance({"user:1": 8})
    ledger.advance({"user:1": 3})
    assert ledger.cursors == {"user:1": 8}


async def collect(events: list[Event], kind: str, count: int, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while len([e for e in events if e.kind == kind]) < count:
            await asyncio.sleep(0.01)


async def test_client_replays_dedupes_across_restart_and_marks_read(fresh_db: str) -> None:
    port = free_port()
    events: list[Event] = []
    async with running_daemon(fresh_db, port=port) as d:
        for i in range(3):
            await d.notify("py", f"missed {i}")
        client = NotifydClient(f"ws://127.0.0.1:{port}", d.token("py"), backoff_base=0.05)

        async def consume() -> None:
            async for event in client.events():
                events.append(event)
                if event.kind == "notification" and event.data["title"] == "read me":
                    # awaiting an answer inside the loop works: a task reads the socket
                    answer = await client.mark_read([event.data["id"]])
                    events.append(Event("answered", answer))

        task = asyncio.create_task(consume())
        await collect(events, "notification", 3)
        await d.notify("py", "read me")
        await collect(events, "answered", 1)
    async with running_daemon(fresh_db, port=port) as d2:
        for i in range(2):
            await d2.notify("py", f"while away {i}")
        await collect(events, "notification", 6)
        await d2.notify("py", "live")
        await collect(events, "notification", 7)
        titles = [e.data["title"] for e in events if e.kind == "notification"]
        assert titles == [
            "missed 0",
            "missed 1",
            "missed 2",
            "read me",
            "while away 0",
            "while away 1",
            "live",
        ]  # each once, in order
        # the read mark is a change of the stream too (seq 5): it came as `updated`
        assert client.cursors["user:py"] == 8
        marked = [e.data for e in events if e.kind == "updated"]
        assert [(n["title"], n["seq"], n["read"]) for n in marked] == [("read me", 5, True)]
        assert (
            await d2.sql("SELECT count(*) FROM notifyd.notifications WHERE read_at IS NOT NULL")
            == 1
        )
        states = [e.data["state"] for e in events if e.kind == "state"]
        assert states[:2] == ["connecting", "open"] and "offline" in states
        await d2.sql("SELECT notifyd.revoke_user('py')")
        async with asyncio.timeout(10):
            await task  # 4003: the iteration ends
        assert events[-1] == Event("state", {"state": "revoked"})


async def test_tail_prints_notifications_live(daemon: Daemon) -> None:
    await daemon.notify("tl", "Earlier")
    proc = await asyncio.create_subprocess_exec(
        *notifyd_cmd(
            "tail", "--url", f"ws://127.0.0.1:{daemon.app.port}", "--token", daemon.token("tl")
        ),
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(30):
            while not any("Earlier" in line for line in lines):
                lines.append((await proc.stdout.readline()).decode())
            await daemon.notify("tl", "Now")
            while not any("Now" in line for line in lines):
                lines.append((await proc.stdout.readline()).decode())
            # the count may come before or after the items (it follows the last one)
            while not any(x.startswith("unread: 2") for x in lines):
                lines.append((await proc.stdout.readline()).decode())
        line = next(x for x in lines if "Now" in x)
        assert "user:tl #2" in line and "[medium] Now:" in line
    finally:
        proc.terminate()
        await proc.wait()


async def test_stop_while_connecting_leaves_no_connection_open(daemon: Daemon) -> None:
    """stop() during the opening handshake has no connection to close yet: the connection
    that opens after it is closed at once, and the loop ends."""
    client = NotifydClient(daemon.url, daemon.token("stopper"))
    states: list[str] = []
    async for event in client.events():
        if event.kind == "state":
            states.append(event.data["state"])
            if event.data["state"] == "connecting":
                await client.stop()
    assert states == ["connecting", "stopped"] and not client.connected
    await eventually(lambda: not daemon.app.connections, 10, "the server saw it close")
