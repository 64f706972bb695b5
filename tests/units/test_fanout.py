"""Fan-out decisions: typed NOTIFY events in, frames out to fake connections."""

from __future__ import annotations

import re

import orjson
import pytest

from notifyd.core.events import (
    Deleted,
    Event,
    New,
    RevocationsChanged,
    UnreadCount,
    Updated,
)
from notifyd.core.fanout import FANOUT_LOG_MIN, UNREAD_FRAMES_KEPT, Publisher, stale_claims
from notifyd.core.index import StreamIndex
from notifyd.core.protocol import encode, websocket_text
from units.fakes import FakeConn, events_of, live_session, wire


def _publisher(*conns: tuple[FakeConn, list[str]]) -> Publisher[FakeConn]:
    index: StreamIndex[FakeConn] = StreamIndex()
    for conn, streams in conns:
        index.add(conn, streams)
    return Publisher(index)


def _new(stream: str, seq: int, nid: int, unread: int | None = None) -> New:
    return New(stream, seq, nid, wire(stream, seq, nid), 0.0, unread)


def test_each_event_kind_makes_its_frame() -> None:
    me, other = FakeConn(live_session()), FakeConn(live_session("c2"))
    publisher = _publisher((me, ["user:1", "all"]), (other, ["user:1"]))
    published: list[Event] = []
    revocations: list[None] = []
    publisher.on_published = published.append
    publisher.on_revocations = lambda: revocations.append(None)
    counted = [0, 0]  # frames, bytes: what the publisher gives the metrics' one count

    def count_sent(frames: int, size: int) -> None:
        counted[0] += frames
        counted[1] += size

    publisher.count_sent = count_sent
    events: list[Event] = [
        _new("user:1", 1, 11, unread=1),
        UnreadCount("user:1", 0),
        Updated("user:1", 2, 11, wire("user:1", 2, 11), unread=0),
        Deleted(11, "user:1", 3),
        _new("all", 1, 12),
        RevocationsChanged("42", 1.5),
        # a row sent by reference and deleted before it was fetched: nothing to publish
        New("user:1", 4, 13, None, 0.0, 1),
        Updated("user:1", 5, 13, None),
        Deleted(13, "user:1", 6, 0),
    ]
    for event in events:
        publisher.publish(event)
    every_change = [
        "notification:new",
        "notification:unread-count",
        "notification:unread-count",
        "notification:updated",
        "notification:unread-count",
        "notification:deleted",
    ]
    assert [f["type"] for f in me.decoded()] == [
        *every_change,
        "notification:new",
        "notification:deleted",
        "notification:unread-count",
    ]
    assert [f["type"] for f in other.decoded()] == [
        *every_change,
        "notification:deleted",
        "notification:unread-count",
    ]
    assert other.decoded()[5]["data"] == {"id": 11, "stream": "user:1", "seq": 3}
    assert me.frames[0] == websocket_text(
        encode("notification:new", {"notification": wire("user:1", 1, 11)})
    ) + websocket_text(encode("notification:unread-count", {"count": 1}))
    assert revocations == [None]
    assert published == events[:6] + events[7:]  # not the row gone before it was fetched
    assert (publisher.delivered, publisher.published) == (9, 5)
    assert counted == [17, me.written + other.written]
    assert publisher.last_seq == {"user:1": 6, "all": 1}


def test_floor_never_drops_live_items_and_a_recheck_only_publishes_news() -> None:
    conn = FakeConn(live_session())
    publisher = _publisher((conn, ["user:1"]))
    # the new subscriber's state query saw seq 10 already committed; its NOTIFY comes later
    publisher.note_floor("user:1", 10)
    publisher.publish(_new("user:1", 10, 10))
    assert len(conn.frames) == 1
    assert publisher.catch_up_points() == {"user:1": 10}
    # a stale payload's claims, fetched from the table: only what is new here is published
    for seq in (9, 10, 11):
        publisher.publish(
            New("user:1", seq, seq, wire("user:1", seq, seq), pending=False, recheck=True)
        )
    seqs = [f["data"]["notification"]["seq"] for f in conn.decoded()]
    assert seqs == [10, 11]
    publisher.note_floor("role:x", 4)
    publisher.publish(New("role:x", 4, 40, wire("role:x", 4, 40), recheck=True))
    assert publisher.catch_up_points() == {"user:1": 11, "role:x": 4}
    publisher.forget(["user:1", "role:x"])
    assert publisher.catch_up_points() == {} and publisher.last_seq == {}


def test_changes_are_published_once_in_seq_order() -> None:
    conn = FakeConn(live_session())
    publisher = _publisher((conn, ["user:1"]))
    publisher.publish(_new("user:1", 2, 2))
    # caught up from the tables, overlapping what was published live
    for seq in (1, 2, 3):
        publisher.publish(New("user:1", seq, seq, wire("user:1", seq, seq)))
    publisher.publish(Updated("user:1", 3, 1, wire("user:1", 3, 1)))  # the same seq again
    publisher.publish(Updated("user:1", 4, 1, wire("user:1", 4, 1)))
    publisher.publish(Deleted(2, "user:1", 4))  # the same seq again
    publisher.publish(Deleted(2, "user:1", 5))
    publisher.publish(New("user:9", 1, 9, wire("user:9", 1, 9)))  # no subscriber: no seq kept
    assert [
        (f["type"][13:], f["data"].get("seq") or f["data"]["notification"]["seq"])
        for f in conn.decoded()
    ] == [("new", 2), ("new", 3), ("updated", 4), ("deleted", 5)]
    assert publisher.last_seq == {"user:1": 5}


def test_stale_claims_keep_new_items_as_references_and_revocations() -> None:
    events = events_of(
        '[{"k":"n","n":' + orjson.dumps(wire("user:1", 3, 30)).decode() + ',"t":1.0,"u":2},'
        '{"k":"n","id":31,"s":"user:1","q":4,"t":1.0},'
        '{"k":"m","id":31,"s":"user:1","q":4},{"k":"c","s":"user:1","u":0},'
        '{"k":"d","id":30,"s":"user:1","q":5,"u":0},{"k":"x","user":"1","at":2.5}]'
    )
    assert stale_claims(events) == [
        New("user:1", 3, 30, None, pending=True, recheck=True),
        New("user:1", 4, 31, None, pending=True, recheck=True),
        RevocationsChanged("1", 2.5),
    ]


def test_large_fanout_logs_its_write_time(caplog: pytest.LogCaptureFixture) -> None:
    conns = [FakeConn(live_session()) for _ in range(FANOUT_LOG_MIN)]
    publisher = _publisher(*((conn, ["all"]) for conn in conns))
    with caplog.at_level("INFO", logger="notifyd.core.fanout"):
        publisher.publish(_new("all", 3, 9))
    assert all(len(c.frames) == 1 for c in conns)
    logged = re.search(
        rf"fan-out to {FANOUT_LOG_MIN} connections took ([\d.]+) ms, "
        r"([\d.]+) ms CPU \(all seq 3\)",
        caplog.text,
    )
    assert logged is not None, caplog.text
    assert 0 < float(logged[2]) <= float(logged[1]) + 1  # CPU within wall (clock granularity)


def test_unread_count_frames_are_built_once_per_small_count() -> None:
    def expected(count: int) -> bytes:
        return websocket_text(encode("notification:unread-count", {"count": count}))

    publisher = _publisher()
    first = publisher.unread_frame("user:a", 7)
    assert first == expected(7) and publisher.unread_frame("user:b", 7) is first
    assert publisher.unread_frame("user:a", -1) == expected(0)
    big = UNREAD_FRAMES_KEPT + 5
    assert publisher.unread_frame("user:a", big) == expected(big)
    assert publisher.unread_frame("user:a", big) is not publisher.unread_frame("user:a", big)
    assert publisher.unread_frame("role:x", 7) is None
    # the cache is the publisher's own, not the module's
    assert _publisher().unread_frame("user:a", 7) is not first
