"""The event pipeline: commit order kept while large rows are fetched and while the LISTEN
connection is down, then caught up (asyncio, with fake fetches: no database)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from units.fakes import FakeConn, events_of, live_session, wire

import notifyd.storage.pipeline as pipeline_module
from notifyd.core.events import Change, New
from notifyd.core.fanout import Publisher
from notifyd.core.index import StreamIndex
from notifyd.storage.pipeline import EventPipeline


async def nothing_missed(after: dict[str, int]) -> list[Change]:
    return []


async def no_receipts(
    wanted: list[tuple[str, int]],
) -> dict[tuple[str, int], tuple[int, bytes]]:
    raise AssertionError("no receipt to fetch here")


async def no_views(wanted: list[tuple[int, list[str]]]) -> dict[int, tuple[int, dict[str, bytes]]]:
    raise AssertionError("no shared edit to fetch here")


def _new(stream: str, seq: int, tail: str = "") -> str:
    return '{"k":"n","n":' + orjson.dumps(wire(stream, seq, seq)).decode() + ',"t":1.0' + tail + "}"


async def test_pipeline_orders_large_rows_and_catches_up() -> None:
    fetched: list[list[int]] = []

    async def fetch_ids(ids: list[int]) -> dict[int, tuple[int, bytes]]:
        fetched.append(ids)
        await asyncio.sleep(0.01)
        return {i: (i, orjson.dumps(wire("user:1", i, i))) for i in ids}

    missed: list[int] = []  # what was committed while the listener was down

    async def catch_up(after: dict[str, int]) -> list[Change]:
        return [
            New("user:1", seq, seq, wire("user:1", seq, seq))
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
    pipeline = EventPipeline(publisher, fetch_ids, catch_up, no_receipts, no_views)
    conn = FakeConn(live_session())
    index.add(conn, ["user:1", "all"])
    publisher.note_floor("user:1", 0)
    assert publisher.read_counts(conn.session, [("user:1", 0, {}), ("all", 0, {})])
    pipeline.put(events_of("[" + _new("user:1", 1, ',"u":{"":[1,1]}') + "]"))
    assert conn.frames == []  # blocked until the listener's first catch-up
    await pipeline.catch_up()
    pipeline.put(
        events_of(
            '[{"k":"n","id":2,"s":"user:1","q":2,"t":1.0,"u":{"":[2,2]}},' + _new("user:1", 3) + "]"
        )
    )
    pipeline.put(
        events_of(
            '[{"k":"?"}, {"k":"c","s":"user:1","q":3,"u":{}}, {"k":"d","id":1,"s":"user:1","q":4}]'
        )
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
    # the LISTEN connection was lost: events queue until catch-up has published 5..8
    pipeline.block()
    pipeline.put(events_of("[" + _new("user:1", 9) + "]"))
    conn.frames.clear()
    missed.extend(range(1, 9))
    assert await pipeline.catch_up() == 4
    await asyncio.sleep(0.01)
    seqs = [f["data"]["notification"]["seq"] for f in conn.decoded()]
    assert seqs == [5, 6, 7, 8, 9]
    assert publisher.delivered == 9
    # the metrics' counts: 7 frames, then 5; every byte written
    assert counted == [12, conn.written]


async def test_a_stale_payload_is_fetched_and_only_news_published() -> None:
    async def fetch_ids(ids: list[int]) -> dict[int, tuple[int, bytes]]:
        return {i: (i, orjson.dumps(wire("user:1", i, i))) for i in ids if i != 3}  # 3: deleted

    index: StreamIndex[FakeConn] = StreamIndex()
    publisher = Publisher(index)
    pipeline = EventPipeline(publisher, fetch_ids, nothing_missed, no_receipts, no_views)
    await pipeline.catch_up()
    conn = FakeConn(live_session())
    index.add(conn, ["user:1"])
    publisher.note_floor("user:1", 1)
    replay = events_of(
        "["
        + ",".join(_new("user:1", seq) for seq in (1, 2, 3, 4))
        + ',{"k":"c","s":"user:1","q":4,"u":{"":[9,9]}}]'
    )
    pipeline.put(replay, stale=True)
    await asyncio.sleep(0.05)
    # 1: had at connect; 3: not in the table; the count of a replay is not trusted
    seqs = [f["data"]["notification"]["seq"] for f in conn.decoded()]
    assert seqs == [2, 4]


async def test_a_failed_fetch_is_retried_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "FETCH_RETRY", 0.01)
    failures = [RuntimeError("database away")]

    async def fetch_ids(ids: list[int]) -> dict[int, tuple[int, bytes]]:
        if failures:
            raise failures.pop()
        return {i: (i, orjson.dumps(wire("user:1", i, i))) for i in ids}

    index: StreamIndex[FakeConn] = StreamIndex()
    publisher = Publisher(index)
    pipeline = EventPipeline(publisher, fetch_ids, nothing_missed, no_receipts, no_views)
    await pipeline.catch_up()
    conn = FakeConn(live_session())
    index.add(conn, ["user:1"])
    pipeline.put(
        events_of('[{"k":"n","id":1,"s":"user:1","q":1,"t":1.0},' + _new("user:1", 2) + "]")
    )
    await asyncio.sleep(0.1)
    seqs = [f["data"]["notification"]["seq"] for f in conn.decoded()]
    assert seqs == [1, 2] and failures == []


async def test_a_large_row_changed_before_its_fetch_waits_for_its_own_event() -> None:
    """A row sent by reference and changed again before it was fetched is not sent at the
    old seq with its newer state (a client's cursor would pass the changes between): its
    newer version's event brings it."""

    async def fetch_ids(ids: list[int]) -> dict[int, tuple[int, bytes]]:
        return {i: (5, orjson.dumps(wire("user:1", 5, i))) for i in ids}  # now at seq 5

    index: StreamIndex[FakeConn] = StreamIndex()
    publisher = Publisher(index)
    pipeline = EventPipeline(publisher, fetch_ids, nothing_missed, no_receipts, no_views)
    await pipeline.catch_up()
    conn = FakeConn(live_session())
    index.add(conn, ["user:1"])
    pipeline.put(
        events_of(
            '[{"k":"n","id":7,"s":"user:1","q":3,"t":1.0},' + _new("user:1", 4) + ","
            '{"k":"m","id":7,"s":"user:1","q":5}]'
        )
    )
    await asyncio.sleep(0.05)
    sent = [(f["type"], f["data"]["notification"]["seq"]) for f in conn.decoded()]
    assert sent == [("notification:new", 4), ("notification:updated", 5)]
