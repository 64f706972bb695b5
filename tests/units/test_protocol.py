"""Client frames decoded and validated; times formatted and parsed."""

from __future__ import annotations

import datetime as dt

import pytest

from notifyd.core.codes import ErrorCode
from notifyd.core.errors import ClientError
from notifyd.core.protocol import (
    MarkRead,
    Ping,
    SyncRequest,
    decode_client_frame,
    format_time,
    parse_time,
)


def test_decode_client_frames() -> None:
    frame = decode_client_frame(
        b'{"type": "notification:mark-read", "data": {"ids": [3, 1, 3]}, "ref": "x"}'
    )
    assert frame.event == MarkRead((3, 1)) and frame.ref == "x"
    sync = decode_client_frame(
        '{"type": "notification:sync-request", "data": '
        '{"cursors": {"user:1": 4}, "since": "2026-01-01T10:00:00+02:00",'
        ' "limit": 5}}'
    ).event
    assert isinstance(sync, SyncRequest) and sync.cursors == {"user:1": 4} and sync.limit == 5
    assert sync.since == dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)
    assert decode_client_frame('{"type": "ping"}').event == Ping(None)
    with pytest.raises(ClientError) as info:
        decode_client_frame('{"type": "what", "ref": "r9"}')
    assert info.value.code is ErrorCode.UNKNOWN_EVENT and info.value.ref == "r9"
    with pytest.raises(ClientError, match="not valid JSON"):
        decode_client_frame(b"\xff\xfe")


def test_times_round_trip() -> None:
    t = parse_time("2026-11-23T09:41:07.123456Z")
    assert format_time(t) == "2026-11-23T09:41:07.123456Z"
    with pytest.raises(ValueError):
        parse_time("2026-11-23T09:41:07")
