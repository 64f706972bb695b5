"""Fan-out decisions: NOTIFY events in, frames out to fake connections."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from notifyd.core.fanout import FANOUT_LOG_MIN, Router
from notifyd.core.index import StreamIndex
from notifyd.core.protocol import (
    encode,
    websocket_text,
)
from units.fakes import FakeConn, events_of, live_session, wire


async def test_router_orders_large_rows_and_catches_up() -> None:
    fetched: list[list[int]] = []

    async def fetch_ids(ids: list[int]) -> dict[int, bytes]:
        fetched.append(ids)
        await asyncio.sleep(0.01)
        return {i: orjson.dumps(wire("user:1", i, i)) for i in ids}

    missed: list[int] = []  # what was committed while the listener was down

    async def catch_up(after: dict[str, int]) -> list[tuple[str, int, bytes]]:
        return [
            ("user:1", seq, orjson.dumps(wire("user:1", seq, seq)))
            for seq in missed
            if seq > after["user:1"]
        ]

    index: StreamIndex[FakeConn] = StreamIndex()
    router = Router(index, fetch_ids, catch_up)
    counted = [0, 0]  # frames, bytes: what the router gives the metrics' count

    def count_sent(frames: int, size: int) -> None:
        counted[0] += frames
        counted[1] += size

    router.count_sent = count_sent
    conn = FakeConn(live_session())
    index.add(conn, ["user:1", "all"])
    router.note_floor("user:1", 0)
    router.feed(
        events_of('[{"k":"n","n":' + orjson.dumps(wire("user:1", 1, 1)).decode() + ',"u":1}]')
    )
    assert conn.frames == []  # blocked until the listener's first catch-up
    await router.catch_up()
    router.feed(
        events_of(
            '[{"k":"n","id":2,"s":"user:1","q":2,"u":2},'
            '{"k":"n","n":' + orjson.dumps(wire("user:1", 3, 3)).decode() + "}]"
        )
    )
    router.feed(
        events_of('[{"k":"?"}, {"k":"c","s":"user:1","u":0}, {"k":"d","id":1,"s":"user:1"}]')
    )
    await asyncio.sleep(0.05)
    assert fetched == [[2]]
    kinds = [
        (f["type"], f["data"].get("notification", {}).get("seq"))  # type: ignore[union-attr]
        for f in conn.decoded()
    ]
    assert kinds == [
        ("notification:new", 1),
        ("notification:unread-count", None),
        ("notification:new", 2),
        ("notification:unread-count", None),
        ("notification:new", 3),
        ("notification:unread-count", None),
        ("notification:deleted", None),
    ]
    # the LISTEN connection was lost: events queue until catch-up has published 4..8
    router.block()
    router.feed(events_of('[{"k":"n","n":' + orjson.dumps(wire("user:1", 9, 9)).decode() + "}]"))
    conn.frames.clear()
    missed.extend(range(1, 9))
    assert await router.catch_up() == 5
    await asyncio.sleep(0.01)
    seqs = [f["data"]["notification"]["seq"] for f in conn.decoded()]  # type: ignore[index]
    assert seqs == [4, 5, 6, 7, 8, 9]
    assert router.delivered == 9
    # the metrics' counts: 7 frames, then 6; every byte written
    assert counted == [13, conn.written]
    router.forget(["user:1"])
    assert "user:1" not in router.last_seq and router.catch_up_points() == {}


async def test_router_floor_never_drops_live_items() -> None:
    async def fetch_ids(ids: list[int]) -> dict[int, bytes]:
        raise AssertionError("no large rows here")

    async def nothing_missed(after: dict[str, int]) -> list[tuple[str, int, bytes]]:
        return []

    index: StreamIndex[FakeConn] = StreamIndex()
    router = Router(index, fetch_ids, nothing_missed)
    await router.catch_up()
    conn = FakeConn(live_session())
    index.add(conn, ["user:1"])
    # the new subscriber's state query saw seq 10 already committed; its NOTIFY comes later
    router.note_floor("user:1", 10)
    router.feed(events_of('[{"k":"n","n":' + orjson.dumps(wire("user:1", 10, 10)).decode() + "}]"))
    assert len(conn.frames) == 1
    assert router.catch_up_points() == {"user:1": 10}


def test_large_fanout_logs_its_write_time(caplog: pytest.LogCaptureFixture) -> None:
    async def unused(_: object) -> dict[int, bytes]:
        raise AssertionError("no database access expected")

    index: StreamIndex[FakeConn] = StreamIndex()
    router = Router(index, unused, unused)  # type: ignore[arg-type]
    router._blocked = False  # as after the listener's first catch-up
    conns = [FakeConn(live_session()) for _ in range(FANOUT_LOG_MIN)]
    for conn in conns:
        index.add(conn, ["all"])
    with caplog.at_level("INFO", logger="notifyd.core.fanout"):
        router.feed(events_of('[{"k":"n","n":' + orjson.dumps(wire("all", 3, 9)).decode() + "}]"))
    assert all(len(c.frames) == 1 for c in conns)
    logged = re.search(
        rf"fan-out to {FANOUT_LOG_MIN} connections took ([\d.]+) ms, "
        r"([\d.]+) ms CPU \(all seq 3\)",
        caplog.text,
    )
    assert logged is not None, caplog.text
    assert 0 < float(logged[2]) <= float(logged[1]) + 1  # CPU within wall (clock granularity)


def test_unread_count_frames_are_built_once_per_small_count() -> None:
    from notifyd.core.fanout import UNREAD_FRAMES_KEPT

    def expected(count: int) -> bytes:
        return websocket_text(encode("notification:unread-count", {"count": count}))

    first = Router._unread_frame("user:a", {"u": 7})
    assert first == expected(7) and Router._unread_frame("user:b", {"u": 7}) is first
    assert Router._unread_frame("user:a", {"u": -1}) == expected(0)
    big = UNREAD_FRAMES_KEPT + 5
    assert Router._unread_frame("user:a", {"u": big}) == expected(big)
    assert Router._unread_frame("role:x", {"u": 7}) is None
