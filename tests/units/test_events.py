"""NOTIFY events: the triggers' JSON decoded into typed objects (sql/EVENTS.md)."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from notifyd.core.channel import Channel, Opened
from notifyd.core.errors import MalformedEvents
from notifyd.core.events import (
    KINDS,
    Deleted,
    Marked,
    New,
    RevocationsChanged,
    UnreadCount,
    Updated,
    decode,
)
from units.fakes import wire


def test_every_kind_decodes_into_its_class() -> None:
    small = wire("user:1", 3, 30)
    shared = wire("all", 5, 33)
    events = decode(
        [
            {"k": "n", "n": small, "t": 1.5, "u": {"": [4, 5]}},
            {"k": "n", "n": wire("all", 1, 31), "t": 1.5},
            {"k": "n", "id": 32, "s": "role:ops", "q": 7, "t": 1.5, "c": "billing"},
            {"k": "m", "n": small},
            {"k": "m", "n": small, "u": {"billing": [1, 0]}},
            {"k": "m", "id": 32, "s": "role:ops", "q": 7},
            {"k": "m", "n": shared},  # a shared item's edit: each user's view is fetched
            {"k": "m", "n": shared, "s": "user:1", "q": 11},  # user:1's receipt of it
            {"k": "m", "id": 33, "s": "user:1", "q": 12, "v": "user:1", "i": "all"},
            {"k": "c", "s": "user:1", "q": 12, "u": {"": [2, 2]}},
            {"k": "c", "s": "all", "q": 6},
            {"k": "d", "id": 30, "s": "user:1", "q": 9},
            {"k": "d", "id": 31, "s": "user:1", "q": 10, "u": {}},
            {
                "k": "a",
                "s": "user:1",
                "q": 13,
                "kind": "read",
                "c": None,
                "target": "all",
                "upto": 5,
                "at": "2026-01-01T00:00:00.000000Z",
                "u": {"": [0, 0]},
            },
            {"k": "x", "user": "42", "at": 1767225600.25},
        ]
    )
    assert events == [
        New("user:1", 3, 30, small, 1.5, {"": (4, 5)}),
        New("all", 1, 31, wire("all", 1, 31), 1.5, None),
        New("role:ops", 7, 32, None, 1.5, None, pending=True, category="billing"),
        Updated("user:1", 3, 30, small),
        Updated("user:1", 3, 30, small, {"billing": (1, 0)}),
        Updated("role:ops", 7, 32, None, pending=True),
        Updated("all", 5, 33, shared, pending=True),
        Updated("user:1", 11, 33, shared, viewer="user:1", item_stream="all"),
        Updated("user:1", 12, 33, None, pending=True, viewer="user:1", item_stream="all"),
        UnreadCount("user:1", 12, {"": (2, 2)}),
        UnreadCount("all", 6),
        Deleted(30, "user:1", 9),
        Deleted(31, "user:1", 10, {}),
        Marked("user:1", 13, "read", None, "all", 5, "2026-01-01T00:00:00.000000Z", {"": (0, 0)}),
        RevocationsChanged("42", 1767225600.25),
    ]
    first = events[0]
    assert isinstance(first, New) and first.notification is small  # by value: no copy
    assert [e.kind for e in events] == list("nnnmmmmmmccddax")
    assert not any(e.pending for e in events if not isinstance(e, New | Updated))
    assert set(KINDS) == set("nmcdax") and all(KINDS[e.kind] is type(e) for e in events)


def test_an_unknown_kind_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR", logger="notifyd.core.events"):
        events = decode([{"k": "z", "s": "user:1"}, {"k": "c", "s": "user:1", "q": 1, "u": {}}])
    assert events == [UnreadCount("user:1", 1, {})]
    assert "unknown NOTIFY event kind 'z' dropped" in caplog.text


@pytest.mark.parametrize(
    "events",
    [
        {"k": "c"},  # not a list
        [{"k": "c", "s": "user:1"}],  # a key missing
        [{"s": "user:1", "u": 0}],  # no kind
        [{"k": "n", "n": {"id": 1}, "t": 1.0}],  # a notification without its stream
        [{"k": "n", "n": "text", "t": 1.0}],  # a notification that is no object
        [{"k": "n", "n": None, "t": 1.0}],  # null: a reference without its keys
        [{"k": "m", "n": [1, 2]}],
        [{"k": "n", "id": 1, "s": "user:1", "q": 1}],  # no "t"
        [{"k": "d", "id": 1, "s": "user:1"}],  # no "q"
        [{"k": "c", "s": "user:1", "q": 1, "u": 3}],  # tallies that are no object
        [{"k": "c", "s": "user:1", "q": 1, "u": {"": [1]}}],  # a tally without its unseen
        [{"k": "a", "s": "user:1", "q": 1, "kind": "read"}],
        [{"k": "x", "user": "1"}],
        [["k", "c"]],  # an event that is no object
        [7],
        ["c"],
    ],
)
def test_malformed_events_are_refused(events: object) -> None:
    with pytest.raises(MalformedEvents):
        decode(events)


def test_a_genuine_payload_with_malformed_events_is_caught_up_instead() -> None:
    key = b"k" * 32
    channel = Channel(window=64)
    channel.set_keys({1: key})

    def signed(nonce: int, events: object) -> str:
        body = orjson.dumps({"k": 1, "i": nonce, "e": events})
        return hmac.new(key, body, hashlib.sha256).hexdigest() + body.decode()

    assert channel.open(signed(1, [{"k": "c", "s": "user:1"}])) == Opened(
        [], stale=True, resync=True
    )
    assert channel.open(signed(2, {"k": "c"})) == Opened([], stale=True, resync=True)
    assert channel.undecodable == 2 and not channel.refused
    # the nonce was taken all the same: a copy is a replay
    assert channel.open(signed(1, [{"k": "c", "s": "user:1"}])) == "replayed"
    assert channel.open(signed(3, [{"k": "c", "s": "user:1", "q": 2, "u": {}}])) == Opened(
        [UnreadCount("user:1", 2, {})], stale=False
    )
