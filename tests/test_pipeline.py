"""The event pipeline: commit order kept while large rows are fetched and while the LISTEN
connection is down, then caught up (asyncio, with fake fetches: no database)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from units.fakes import FakeConn, events_of, live_session, wire

import notifyd.storage.pipeline as pipeline_module
from notifyd.core.fanout import Publisher
from notifyd.core.index import StreamIndex
from notifyd.storage.pipeline import EventPipeline


def _new(stream: str, seq: int, tail: str = "") -> str:
    return '{"k":"n","n":' + orjson.dumps(wire(stream, seq, seq)).decode() + ',"t":1.0' + tail + "}"


async def test_pipeline_orders_large_rows_and_catches_up() -> None:
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
    publisher = Publisher(index)
    counted = [0, 0]  # frames, bytes: what the publisher gives the metrics' one count

    def count_sent(frames: int, size: int) -> None:
        counted[0] += frames
        counted[1] += size

    publisher.count_sent = count_sent
    pipeline = EventPipeline(publisher, fetch_ids, catch_up)
    conn = FakeConn(live_session())
    index.add(conn, ["user:1", "all"])
    publisher.note_floor("user:1", 0)
    pipeline.put(events_of("[" + _new("user:1", 1, ',"u":1') + "]"))
    assert conn.frames == []  # blocked until the listener's first catch-up
    await pipeline.catch_up()
    pipeline.put(
        events_of('[{"k":"n","id":2,"s":"user:1","q":2,"t":1.0,"u":2},' + _new("user:1", 3) + "]")
    )
    pipeline.put(
        events_of('[{"k":"?"}, {"k":"c","s":"user:1","u":0}, {"k":"d","id":1,"s":"user:1"}]')
    )
    await asyncio.sleep(0.05)
    assert fetched == [[2]]
    kinds = [(f["type"], f["data"].get("notification", {}).get("seq")) for f in conn.decoded()]
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
    pipeline.block()
    pipeline.put(events_of("[" + _new("user:1", 9) + "]"))
    conn.frames.clear()
    missed.extend(range(1, 9))
    assert await pipeline.catch_up() == 5
    await asyncio.sleep(0.01)
    seqs = [f["data"]["notification"]["seq"] for f in conn.decoded()]
    assert seqs == [4, 5, 6, 7, 8, 9]
    assert publisher.delivered == 9
    # the metrics' counts: 7 frames, then 6; every byte written
    assert counted == [13, conn.written]


async def test_a_stale_payload_is_fetched_and_only_news_published() -> None:
    async def fetch_ids(ids: list[int]) -> dict[int, bytes]:
        return {i: orjson.dumps(wire("user:1", i, i)) for i in ids if i != 3}  # 3: deleted

    async def nothing_missed(after: dict[str, int]) -> list[tuple[str, int, bytes]]:
        return []

    index: StreamIndex[FakeConn] = StreamIndex()
    publisher = Publisher(index)
    pipeline = EventPipeline(publisher, fetch_ids, nothing_missed)
    await pipeline.catch_up()
    conn = FakeConn(live_session())
    index.add(conn, ["user:1"])
    publisher.note_floor("user:1", 1)
    replay = events_of(
        "["
        + ",".join(_new("user:1", seq) for seq in (1, 2, 3, 4))
        + ',{"k":"c","s":"user:1","u":9}]'
    )
    pipeline.put(replay, stale=True)
    await asyncio.sleep(0.05)
    # 1: had at connect; 3: not in the table; the count of a replay is not trusted
    seqs = [f["data"]["notification"]["seq"] for f in conn.decoded()]
    assert seqs == [2, 4]


async def test_a_failed_fetch_is_retried_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "FETCH_RETRY", 0.01)
    failures = [RuntimeError("database away")]

    async def fetch_ids(ids: list[int]) -> dict[int, bytes]:
        if failures:
            raise failures.pop()
        return {i: orjson.dumps(wire("user:1", i, i)) for i in ids}

    async def nothing_missed(after: dict[str, int]) -> list[tuple[str, int, bytes]]:
        return []

    index: StreamIndex[FakeConn] = StreamIndex()
    publisher = Publisher(index)
    pipeline = EventPipeline(publisher, fetch_ids, nothing_missed)
    await pipeline.catch_up()
    conn = FakeConn(live_session())
    index.add(conn, ["user:1"])
    pipeline.put(
        events_of('[{"k":"n","id":1,"s":"user:1","q":1,"t":1.0},' + _new("user:1", 2) + "]")
    )
    await asyncio.sleep(0.1)
    seqs = [f["data"]["notification"]["seq"] for f in conn.decoded()]
    assert seqs == [1, 2] and failures == []
