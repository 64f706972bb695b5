"""Fan-out decisions: typed NOTIFY events in, frames out to fake connections."""

from __future__ import annotations

import re

import orjson
import pytest

from notifyd.core.events import (
    Deleted,
    Event,
    Marked,
    New,
    RevocationsChanged,
    UnreadCount,
    Updated,
)
from notifyd.core.fanout import FANOUT_LOG_MIN, Publisher, stale_claims
from notifyd.core.index import StreamIndex
from notifyd.core.protocol import encode, websocket_text
from units.fakes import FakeConn, events_of, live_session, wire


def _publisher(*conns: tuple[FakeConn, list[str]]) -> Publisher[FakeConn]:
    index: StreamIndex[FakeConn] = StreamIndex()
    for conn, streams in conns:
        index.add(conn, streams)
    return Publisher(index)


def _new(stream: str, seq: int, nid: int, unread: int | None = None, category: str = "") -> New:
    tallies = {"": (unread, unread)} if unread is not None else None
    return New(stream, seq, nid, wire(stream, seq, nid), 0.0, tallies, category=category)


def _counts(count: int, unseen: int, **categories: tuple[int, int]) -> dict[str, object]:
    return {
        "count": count,
        "unseen": unseen,
        "categories": {c: {"unread": u, "unseen": s} for c, (u, s) in categories.items()},
    }


def test_each_event_kind_makes_its_frame() -> None:
    me, other = FakeConn(live_session()), FakeConn(live_session("c2"))
    publisher = _publisher((me, ["user:1", "all"]), (other, ["user:1", "all"]))
    published: list[Event] = []
    revocations: list[None] = []
    stale: list[list[str]] = []
    publisher.on_published = published.append
    publisher.on_revocations = lambda: revocations.append(None)
    publisher.on_counts_stale = stale.append
    counted = [0, 0]  # frames, bytes: what the publisher gives the metrics' one count

    def count_sent(frames: int, size: int) -> None:
        counted[0] += frames
        counted[1] += size

    publisher.count_sent = count_sent
    # the counts each connection read at connect
    for conn in (me, other):
        frame = publisher.read_counts(conn.session, [("user:1", 0, {}), ("all", 0, {})])
        assert frame == websocket_text(encode("notification:unread-count", _counts(0, 0)))
        conn.deliver(frame)
    assert publisher.read_counts(me.session, [("user:1", 0, {})]) is None  # nothing new
    events: list[Event] = [
        _new("user:1", 1, 11, unread=1),
        UnreadCount("user:1", 1, {"": (1, 1)}),  # the same counts: no frame
        Updated("user:1", 2, 11, wire("user:1", 2, 11), {"": (0, 1)}),
        Deleted(11, "user:1", 3, {}),
        _new("all", 1, 12, category="billing"),  # one more unread and unseen, for each
        RevocationsChanged("42", 1.5),
        # a row sent by reference and deleted before it was fetched: nothing to publish
        New("user:1", 4, 13, None, 0.0, {"": (1, 1)}),
        Updated("user:1", 5, 13, None),
        Deleted(13, "user:1", 6, {}),
        Marked("user:1", 7, "read", None, "all", 1, "2026-01-01T00:00:00.000000Z", {}),
    ]
    for event in events:
        publisher.publish(event)
    expected = [
        "notification:new",
        "notification:unread-count",
        "notification:updated",
        "notification:unread-count",
        "notification:deleted",
        "notification:unread-count",
        "notification:new",
        "notification:unread-count",
        "notification:deleted",
        "notification:marked",
    ]
    assert [f["type"] for f in me.decoded()] == ["notification:unread-count", *expected]
    assert [f["type"] for f in other.decoded()] == ["notification:unread-count", *expected]
    counts = [f["data"] for f in me.decoded() if f["type"] == "notification:unread-count"]
    billing = _counts(1, 1, billing=(1, 1))
    assert counts == [_counts(0, 0), _counts(1, 1), _counts(0, 1), _counts(0, 0), billing]
    assert other.decoded()[5]["data"] == {"id": 11, "stream": "user:1", "seq": 3}
    assert me.frames[1] == websocket_text(
        encode("notification:new", {"notification": wire("user:1", 1, 11)})
    ) + websocket_text(encode("notification:unread-count", _counts(1, 1)))
    assert revocations == [None]
    # a mark of a shared stream: the user's part of it is read again
    assert stale == [["user:1"]]
    assert published == events[:6] + events[7:]  # not the row gone before it was fetched
    assert (publisher.delivered, publisher.published) == (12, 6)
    assert counted == [20, me.written + other.written - 2 * len(me.frames[0])]
    assert publisher.last_seq == {"user:1": 7, "all": 1}


def test_a_late_count_query_gets_the_shared_items_published_after_it() -> None:
    conn = FakeConn(live_session())
    publisher = _publisher((conn, ["user:1", "all"]))
    stale: list[list[str]] = []
    publisher.on_counts_stale = stale.append
    publisher.read_counts(conn.session, [("user:1", 0, {}), ("all", 5, {"": (2, 2)})])
    for seq in (6, 7):
        publisher.publish(_new("all", seq, seq, category="news"))
    # a query read at seq 6 answers now: item 7 is added to it, item 6 is not counted twice
    frame = publisher.read_counts(conn.session, [("all", 6, {"": (1, 1), "news": (1, 1)})])
    data = orjson.loads(frame[2:]) if frame else None
    assert data is not None and data["data"] == _counts(3, 3, news=(2, 2))
    # an edit of a shared item: what came after a part read below it is not known here
    publisher.publish(Deleted(5, "all", 8))
    assert stale == [["user:1"]]
    assert publisher.read_counts(conn.session, [("all", 7, {})]) is None
    assert stale == [["user:1"], ["user:1"]]  # read again
    assert publisher.read_counts(conn.session, [("all", 8, {"": (1, 1)})]) is not None


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
        '[{"k":"n","n":' + orjson.dumps(wire("user:1", 3, 30)).decode() + ',"t":1.0,"u":{}},'
        '{"k":"n","id":31,"s":"user:1","q":4,"t":1.0},'
        '{"k":"m","id":31,"s":"user:1","q":4},{"k":"c","s":"user:1","q":4,"u":{}},'
        '{"k":"d","id":30,"s":"user:1","q":5,"u":{}},{"k":"x","user":"1","at":2.5}]'
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


def test_equal_counts_share_one_frame() -> None:
    one, two = FakeConn(live_session()), FakeConn(live_session("c2"))
    publisher = _publisher((one, ["user:1", "all"]), (two, ["user:1", "all"]))
    for conn in (one, two):
        frame = publisher.read_counts(conn.session, [("user:1", 0, {"": (2, 2)}), ("all", 0, {})])
        assert frame is not None
        conn.deliver(frame)
    assert one.frames[0] is two.frames[0]
    assert one.decoded()[0]["data"] == _counts(2, 2)
    # negative tallies (a counter row behind) never show below zero
    frame = publisher.read_counts(one.session, [("user:1", 1, {"": (-1, 0)})])
    assert frame is not None
    one.deliver(frame)
    assert one.decoded()[1]["data"] == _counts(0, 0)
    # the cache is the publisher's own, not the module's
    other = _publisher((FakeConn(live_session()), ["user:1"]))
    assert other.count_frame(one.session) is None  # sent already
