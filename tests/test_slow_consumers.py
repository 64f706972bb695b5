# A client that stops reading while large notifications pile up is closed with 4008 once its
# send buffer passes max_send_buffer; the daemon stops buffering for it (and aborts the socket
# after the grace period if it never reads), while another user's client is unaffected.
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from faults_support import RawClient, eventually, logged_errors
from support import Client, Daemon, running_daemon
from websockets.frames import Opcode

from notifyd.core.codes import CloseCode
from notifyd.edge.server import CLOSE_GRACE, Connection

MAX_SEND_BUFFER = 65536
LARGE = "é" * 10_000  # 20 kB of UTF-8 per notification: far above a NOTIFY payload too
ROWS = 200
FRAME_MAX = 2 * len(LARGE.encode()) + 1000  # a notification:new frame of LARGE, and slack


@dataclass
class Scene:
    d: Daemon
    slow: RawClient
    slow_conn: Connection
    fast: Client
    fast_got: list[dict[str, Any]] = field(default_factory=list)
    fast_sent: int = 0
    inserted: int = 0
    fast_reader: asyncio.Task[None] | None = None


@pytest.fixture
async def scene(fresh_db: str) -> AsyncIterator[Scene]:
    """A daemon with a small send buffer; a raw client of user `slow` that has read its
    connection-confirmed and unread count and then stops reading; a well-behaved client of
    user `fast` whose frames are read as they come."""
    async with running_daemon(fresh_db, max_send_buffer=MAX_SEND_BUFFER) as d:
        slow = await RawClient.open(f"{d.url}?token={d.token('slow')}")
        await slow.read_frames_until(
            lambda r: any(t["type"] == "notification:unread-count" for t in r.texts), 10
        )
        assert slow.texts[0]["type"] == "connection-confirmed"
        slow_conn = next(iter(d.app.index.subscribers("user:slow")))
        fast = await d.connect("fast")
        s = Scene(d, slow, slow_conn, fast)

        async def read_fast() -> None:
            while True:
                s.fast_got.append((await fast.next_data("notification:new", 3600))["notification"])

        s.fast_reader = asyncio.create_task(read_fast())
        try:
            yield s
        finally:
            await stop_reading_fast(s)
            slow.close()


async def stop_reading_fast(s: Scene) -> None:
    if s.fast_reader is not None:
        s.fast_reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await s.fast_reader
        s.fast_reader = None


async def insert_load(s: Scene) -> None:
    """ROWS large notifications for `slow`; a small one for `fast` after every tenth."""
    pool = await s.d.pool()
    for i in range(ROWS):
        await pool.execute("SELECT notifyd.notify('slow', 'big', $1, $2)", f"big {i}", LARGE)
        s.inserted += 1
        if i % 10 == 9:
            await s.d.notify("fast", f"fast {s.fast_sent}")
            s.fast_sent += 1


async def check_fast_client_unharmed(s: Scene) -> None:
    await eventually(
        lambda: len(s.fast_got) >= s.fast_sent, 30, "the fast client has all its notifications"
    )
    assert [n["title"] for n in s.fast_got] == [f"fast {i}" for i in range(s.fast_sent)]
    assert [n["seq"] for n in s.fast_got] == list(range(1, s.fast_sent + 1))
    await stop_reading_fast(s)
    assert (await s.fast.request("ping", {}, "pong"))["type"] == "pong"
    assert s.fast.ws.close_code is None  # still open
    remaining = [c for c in s.d.app.connections if c.transport is not None]
    assert remaining and all(
        c.session.identity is not None and c.session.identity.user_id == "fast" for c in remaining
    )
    assert all(
        c.transport is not None and c.transport.get_write_buffer_size() <= MAX_SEND_BUFFER
        for c in remaining
    )


async def wait_until_dropped(s: Scene) -> None:
    """The daemon gave up on the slow client: it is no longer a connection or subscriber."""
    await eventually(
        lambda: s.slow_conn not in s.d.app.connections, 60, "the slow client is dropped"
    )
    assert not s.d.app.index.subscribers("user:slow")
    # Its output is over: the 4008 close frame was the last thing written, the frames not yet
    # begun were dropped, and the socket is half-closed behind it (the server reads on, for
    # the client's close), holding at most the bound and one frame.
    conn = s.slow_conn
    assert conn.ws.close_sent is not None and conn.ws.close_sent.code == CloseCode.TOO_SLOW
    assert conn.closing is not None and conn.backlog is None and conn.queued == 0
    assert conn.transport is not None
    assert conn.transport.get_write_buffer_size() <= MAX_SEND_BUFFER + FRAME_MAX


async def test_slow_client_that_resumes_reading_gets_4008_last(scene: Scene) -> None:
    s = scene
    load = asyncio.create_task(insert_load(s))
    with logged_errors() as errors:
        try:
            await wait_until_dropped(s)
            assert s.inserted < ROWS  # cut off long before the load was over
            # resume reading at once, within the 2 s the server gives a closing connection
            await s.slow.read_to_end(10)
            await load
        finally:
            if not load.done():
                load.cancel()
        await asyncio.sleep(CLOSE_GRACE + 0.5)  # past the grace period: nothing left to abort
    assert not errors, [r.getMessage() for r in errors] + [str(r.exc_info) for r in errors]
    frames = s.slow.frames
    assert frames[-1].opcode is Opcode.CLOSE, [f.opcode for f in frames[-3:]]
    close = s.slow.close_frame
    assert close is not None and close.code == CloseCode.TOO_SLOW
    # what did arrive is a gap-free prefix of its stream, each frame whole and valid
    got = [t["data"]["notification"] for t in s.slow.texts if t["type"] == "notification:new"]
    assert [n["seq"] for n in got] == list(range(1, len(got) + 1))
    assert all(n["message"] == LARGE for n in got) and len(got) < ROWS
    # the connection drained its buffer and is gone: it holds nothing any more
    assert s.slow_conn.transport is None
    await check_fast_client_unharmed(s)


async def test_slow_client_that_never_reads_again_is_aborted(scene: Scene) -> None:
    s = scene
    load = asyncio.create_task(insert_load(s))
    with logged_errors() as errors:
        await _never_reads_again(s, load)
    assert not errors, [r.getMessage() for r in errors] + [str(r.exc_info) for r in errors]
    # The 4008 close frame was still in the dropped buffer: the client finds the socket gone.
    await s.slow.read_to_end(10)
    assert s.slow.eof or s.slow.reset
    assert s.slow.close_frame is None
    got = [t["data"]["notification"] for t in s.slow.texts if t["type"] == "notification:new"]
    assert [n["seq"] for n in got] == list(range(1, len(got) + 1))
    assert len(got) < ROWS
    await check_fast_client_unharmed(s)


async def _never_reads_again(s: Scene, load: asyncio.Task[None]) -> None:
    try:
        await wait_until_dropped(s)
        transport = s.slow_conn.transport
        assert transport is not None
        # Not reading, it cannot drain: the server aborts the socket after its grace period
        # (2 s) and drops the buffered bytes, close frame included.
        await eventually(
            lambda: transport.get_write_buffer_size() == 0,
            10,
            "the server released the slow client's send buffer",
        )
        assert transport.is_closing()
        await load
    finally:
        if not load.done():
            load.cancel()
