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
    New,
    RevocationsChanged,
    UnreadCount,
    Updated,
    decode,
)
from units.fakes import wire


def test_every_kind_decodes_into_its_class() -> None:
    small = wire("user:1", 3, 30)
    events = decode(
        [
            {"k": "n", "n": small, "t": 1.5, "u": 4},
            {"k": "n", "n": wire("all", 1, 31), "t": 1.5},
            {"k": "n", "id": 32, "s": "role:ops", "q": 7, "t": 1.5},
            {"k": "m", "n": small},
            {"k": "m", "n": small, "u": 1},
            {"k": "m", "id": 32, "s": "role:ops", "q": 7},
            {"k": "c", "s": "user:1", "u": 2},
            {"k": "d", "id": 30, "s": "user:1", "q": 9},
            {"k": "d", "id": 31, "s": "user:1", "q": 10, "u": 0},
            {"k": "x", "user": "42", "at": 1767225600.25},
        ]
    )
    assert events == [
        New("user:1", 3, 30, small, 1.5, 4),
        New("all", 1, 31, wire("all", 1, 31), 1.5, None),
        New("role:ops", 7, 32, None, 1.5, None, pending=True),
        Updated("user:1", 3, 30, small),
        Updated("user:1", 3, 30, small, 1),
        Updated("role:ops", 7, 32, None, pending=True),
        UnreadCount("user:1", 2),
        Deleted(30, "user:1", 9),
        Deleted(31, "user:1", 10, 0),
        RevocationsChanged("42", 1767225600.25),
    ]
    first = events[0]
    assert isinstance(first, New) and first.notification is small  # by value: no copy
    assert [e.kind for e in events] == list("nnnmmmcddx")
    assert not any(e.pending for e in events if not isinstance(e, New | Updated))
    assert set(KINDS) == set("nmcdx") and all(KINDS[e.kind] is type(e) for e in events)


def test_an_unknown_kind_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR", logger="notifyd.core.events"):
        events = decode([{"k": "z", "s": "user:1"}, {"k": "c", "s": "user:1", "u": 0}])
    assert events == [UnreadCount("user:1", 0)]
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
    assert channel.open(signed(3, [{"k": "c", "s": "user:1", "u": 1}])) == Opened(
        [UnreadCount("user:1", 1)], stale=False
    )
