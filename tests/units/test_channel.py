"""The check of NOTIFY payloads: signed, by a known key, not seen before."""

from __future__ import annotations

import os

from notifyd.core.channel import Channel, Opened
from notifyd.core.events import Event, UnreadCount
from units.fakes import signed_payload


def test_channel_opens_only_signed_unseen_payloads() -> None:
    key = os.urandom(32)
    channel = Channel(window=64)
    channel.set_keys({1: key})
    channel.listening_from(10)
    events: list[dict[str, object]] = [{"k": "c", "s": "user:1", "q": 3, "u": {"": [3, 3]}}]
    decoded: list[Event] = [UnreadCount("user:1", 3, {"": (3, 3)})]
    good = signed_payload(key, 1, 11, events)
    assert channel.open(good) == Opened(decoded, stale=False)
    assert channel.open(good) == "replayed"
    body = good[64:]
    assert channel.open(good[:64] + body.replace('"q":3', '"q":0')) == "signature"
    assert channel.open("0" * 64 + body) == "signature"
    assert channel.open(signed_payload(os.urandom(32), 2, 12, events)) == "unknown-key"
    for junk in (
        "",
        "[]",
        '[{"k":"n"}]',
        "x" * 64 + "[1]",
        "x" * 64 + '{"k":1,"i":"2","e":[]}',
        "x" * 64 + '{"k":1,"i":0,"e":[]}',
        "x" * 64 + '{"k":true,"i":5,"e":[]}',
    ):
        assert channel.open(junk) == "malformed", junk
    # numbered before this process listened: genuine, but maybe a replay of one not seen
    assert channel.open(signed_payload(key, 1, 10, events)) == Opened(decoded, stale=True)
    # out of commit order within the window: fresh once, then a replay
    assert channel.open(signed_payload(key, 1, 20, events)) == Opened(decoded, stale=False)
    assert channel.open(signed_payload(key, 1, 15, events)) == Opened(decoded, stale=False)
    assert channel.open(signed_payload(key, 1, 15, events)) == "replayed"
    # past the window: stale, never "fresh" again
    assert channel.open(signed_payload(key, 1, 100, events)) == Opened(decoded, stale=False)
    assert channel.open(signed_payload(key, 1, 20, events)) == Opened(decoded, stale=True)
    assert channel.open(signed_payload(key, 1, 99, events)) == Opened(decoded, stale=False)
    assert dict(channel.refused) == {
        "replayed": 2,
        "signature": 2,
        "unknown-key": 1,
        "malformed": 7,
    }
    assert channel.stale == 2
    # the sequence went back (a restored database): its payloads are fresh again, once each
    channel.listening_from(5)
    assert channel.open(signed_payload(key, 1, 5, events)) == Opened(decoded, stale=True)
    assert channel.open(signed_payload(key, 1, 6, events)) == Opened(decoded, stale=False)
    assert channel.open(signed_payload(key, 1, 6, events)) == "replayed"
