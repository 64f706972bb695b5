# Pure units of the sans-I/O core, without sockets or a database: settings, protocol
# decoding, authentication with a fake clock, the per-connection replay hold-back, the index,
# presence and the router (fed NOTIFY payloads, writing to fake connections).
from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from notifyd import config
from notifyd.core.auth import Authenticator, issue_token
from notifyd.core.errors import AuthError, ClientError, ConfigError
from notifyd.core.fanout import FANOUT_LOG_MIN, Router
from notifyd.core.index import StreamIndex
from notifyd.core.presence import LocalPresence, PresenceChange, PresencePolicy, UserPresence
from notifyd.core.protocol import (
    MarkRead,
    Ping,
    SyncRequest,
    decode_client_frame,
    encode,
    format_time,
    parse_time,
    websocket_text,
)
from notifyd.core.session import Session, State
from notifyd.core.timers import TimerWheel
from notifyd.storage.migrate import migrations

SECRET = "unit-secret-" + "z" * 40


# -- settings ---------------------------------------------------------------------------


def test_settings_defaults_and_casting() -> None:
    s = config.load(
        {
            "NOTIFYD_PORT": "9000",
            "NOTIFYD_JWT_ALGORITHMS": "hs256, RS256",
            "NOTIFYD_ALLOWED_ORIGINS": "https://a, https://b",
            "NOTIFYD_AUTH_TIMEOUT": "2.5",
        }
    )
    assert s.port == 9000 and s.host == "127.0.0.1"
    assert s.jwt_algorithms == ("HS256", "RS256")
    assert s.allowed_origins == ("https://a", "https://b") and s.auth_timeout == 2.5
    with pytest.raises(ConfigError, match="NOTIFYD_AUTH_TIMEOUT"):
        config.load({"NOTIFYD_AUTH_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="NOTIFYD_ALLOWED_ORIGINS"):
        config.load({"NOTIFYD_ALLOWED_ORIGINS": " , "})


def test_settings_file_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('port = "x"\n')
    with pytest.raises(ConfigError, match="NOTIFYD_PORT"):
        config.load({}, path)
    path.write_text("port = true\n")
    with pytest.raises(ConfigError, match="NOTIFYD_PORT"):
        config.load({}, path)
    path.write_text("allowed_origins = [1]\n")
    with pytest.raises(ConfigError, match="NOTIFYD_ALLOWED_ORIGINS"):
        config.load({}, path)
    path.write_text("host = 5\n")
    with pytest.raises(ConfigError, match="NOTIFYD_HOST"):
        config.load({}, path)
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load({}, path)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config.load({"NOTIFYD_JWT_SECRET_FILE": str(empty)})
    with pytest.raises(ConfigError, match="either"):
        config.load({"NOTIFYD_JWT_SECRET_FILE": str(empty), "NOTIFYD_JWT_SECRET": SECRET})
    not_pem = tmp_path / "k"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="PEM"):
        config.load({"NOTIFYD_JWT_PUBLIC_KEY_FILE": str(not_pem)})
    with pytest.raises(ConfigError, match="ASCII"):
        config.load({"NOTIFYD_JWT_COOKIE": "sessión"})


def test_serving_requirements() -> None:
    with pytest.raises(ConfigError, match="NOTIFYD_DSN"):
        config.require_serving(config.load({"NOTIFYD_JWT_SECRET": SECRET}))
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_SECRET"):
        config.require_serving(config.load({"NOTIFYD_DSN": "postgresql://x/y"}))
    config.require_serving(
        config.load({"NOTIFYD_DSN": "postgresql://x/y", "NOTIFYD_JWT_SECRET": SECRET})
    )


# -- protocol -----------------------------------------------------------------------------


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
    assert info.value.code == "unknown-event" and info.value.ref == "r9"
    with pytest.raises(ClientError, match="not valid JSON"):
        decode_client_frame(b"\xff\xfe")
    with pytest.raises(ValueError, match="undocumented"):
        ClientError("made-up")


def test_times_round_trip() -> None:
    t = parse_time("2026-11-23T09:41:07.123456Z")
    assert format_time(t) == "2026-11-23T09:41:07.123456Z"
    with pytest.raises(ValueError):
        parse_time("2026-11-23T09:41:07")


# -- auth ---------------------------------------------------------------------------------


def test_authenticator_with_a_fake_clock() -> None:
    now = [1_000_000.0]
    auth = Authenticator(config.load({"NOTIFYD_JWT_SECRET": SECRET}), clock=lambda: now[0])
    token = issue_token(SECRET, "7", ["A", "b", "a"], ttl=60, clock=lambda: now[0])
    identity = auth.verify(token)
    assert identity.user_id == "7" and identity.roles == ("a", "b")
    assert identity.streams == ("user:7", "role:a", "role:b", "all")
    now[0] += 61
    with pytest.raises(AuthError, match="expired"):
        auth.verify(token)
    with pytest.raises(AuthError, match="too long"):
        auth.verify("x" * 9000)
    many = issue_token(SECRET, "7", [f"r{i}" for i in range(100)], clock=lambda: now[0])
    with pytest.raises(AuthError, match="too many roles"):
        auth.verify(many)
    rs_only = Authenticator(
        config.load({"NOTIFYD_JWT_SECRET": SECRET, "NOTIFYD_JWT_ALGORITHMS": "HS256,RS256"})
    )
    with pytest.raises(AuthError, match="not allowed"):
        rs_only.verify(issue_token(SECRET, "1", algorithm="HS384"))


# -- session: the order guarantee ---------------------------------------------------------


def live_session() -> Session:
    s = Session("c1")
    auth = Authenticator(config.load({"NOTIFYD_JWT_SECRET": SECRET}))
    s.authenticate(auth.verify(issue_token(SECRET, "1")))
    return s


def test_session_holds_live_items_during_sync_and_drops_duplicates() -> None:
    s = live_session()
    assert s.state is State.LIVE
    assert s.offer("user:1", 1, b"f1") == b"f1"  # before any sync: live as it comes
    s.begin_sync(["user:1", "all"])
    with pytest.raises(ClientError, match="previous"):
        s.begin_sync(["user:1"])
    for seq in (4, 5, 6):
        assert s.offer("user:1", seq, f"f{seq}".encode()) is None  # held
    assert s.offer("role:x", 9, b"other") == b"other"  # streams not in the sync flow on
    # the response delivered up to 5: only 6 follows, then live items above it
    assert s.finish_sync({"user:1": 5, "all": 0}, set()) == [b"f6"]
    assert s.offer("user:1", 6, b"dup") is None
    assert s.offer("user:1", 7, b"f7") == b"f7"


def test_session_behind_after_has_more_and_abort() -> None:
    s = live_session()
    s.begin_sync(["user:1"])
    s.offer("user:1", 10, b"f10")
    assert s.finish_sync({"user:1": 3}, {"user:1"}) == []
    assert s.offer("user:1", 11, b"f11") is None  # behind: the next sync brings it
    s.begin_sync(["user:1"])
    s.offer("user:1", 12, b"f12")
    assert s.abort_sync() == []  # still behind after a failed sync
    s.begin_sync(["user:1"])
    assert s.finish_sync({"user:1": 11}, set()) == []
    assert s.offer("user:1", 12, b"f12") == b"f12"


def test_session_in_flight_covers_live_and_released_items_until_the_next_sync() -> None:
    s = live_session()
    assert s.in_flight() == {}
    s.offer("user:1", 3, b"f3")
    s.offer("user:1", 4, b"f4")
    assert s.in_flight() == {"user:1": (3, 4)}  # may still be on its way: a sync skips it
    s.begin_sync(["user:1", "all"])
    s.offer("user:1", 9, b"f9")  # held during the sync, sent after the response
    assert s.finish_sync({"user:1": 8, "all": 0}, set()) == [b"f9"]
    assert s.in_flight() == {"user:1": (9, 9)}
    s.begin_sync(["user:1", "all"])
    s.offer("all", 2, b"a2")
    assert s.finish_sync({"user:1": 9, "all": 1}, {"all"}) == []  # all: another page
    assert s.in_flight() == {}


def test_session_streams_given_as_they_are_leave_nothing_out_of_their_next_pages() -> None:
    s = live_session()
    s.offer("user:1", 3, b"f3")
    s.offer("user:1", 4, b"f4")
    s.offer("all", 7, b"a7")
    s.begin_sync(["user:1", "all"])
    # user:1 asked without a cursor (or reset): 3 and 4 are in its response or its next pages
    assert s.finish_sync({"user:1": 2, "all": 5}, {"user:1", "all"}, fresh={"user:1"}) == []
    assert s.in_flight() == {"all": (7, 7)}  # all had a cursor: still never twice
    s.begin_sync(["user:1", "all"])
    assert s.finish_sync({"user:1": 4, "all": 7}, set()) == []
    assert s.in_flight() == {}
    assert s.offer("user:1", 4, b"dup") is None and s.offer("user:1", 5, b"f5") == b"f5"


def test_session_waiting_for_sync_sends_nothing_live_until_the_response() -> None:
    s = live_session()
    s.wait_for_sync()
    assert s.offer("user:1", 1, b"f1") is None  # the sync brings it
    s.begin_sync(["user:1", "all"])
    s.offer("user:1", 2, b"f2")
    assert s.abort_sync() == []  # a failed sync: still waiting for one that answers
    assert s.offer("user:1", 3, b"f3") is None
    s.begin_sync(["user:1", "all"])
    s.offer("user:1", 4, b"f4")
    assert s.finish_sync({"user:1": 3, "all": 0}, set()) == [b"f4"]
    assert s.offer("user:1", 5, b"f5") == b"f5"


def test_session_refresh_takes_the_fresh_tokens_roles() -> None:
    s = live_session()
    auth = Authenticator(config.load({"NOTIFYD_JWT_SECRET": SECRET}))
    refreshed = s.authenticate(auth.verify(issue_token(SECRET, "1", ["admin"], ttl=9999)))
    assert refreshed.roles == ("admin",) and refreshed.expires_at > 0
    assert s.identity == refreshed
    with pytest.raises(ClientError) as info:
        s.authenticate(auth.verify(issue_token(SECRET, "2")))
    assert info.value.code == "auth-user-mismatch"


# -- index and presence -------------------------------------------------------------------


def test_index_tracks_streams() -> None:
    index: StreamIndex[str] = StreamIndex()
    assert index.add("a", ["user:u1", "all"]) == ["user:u1", "all"]
    assert index.add("b", ["user:u1", "all"]) == []
    assert index.subscribers("user:u1") == {"a", "b"}
    assert index.remove("a", ["user:u1", "all", "never"]) == []
    assert index.remove("b", ["user:u1", "all"]) == ["user:u1", "all"]
    assert not index.subscribers("all") and not index.subscribers("user:u1")


def test_presence_counts_devices_and_roles() -> None:
    p = LocalPresence()
    came = p.connected("u", ("doctor",), 1.0)
    assert came == PresenceChange(True, "u", ("doctor",), 1.0)
    assert p.connected("u", ("doctor",), 2.0) is None
    assert p.role_counts(["doctor", "nurse"]) == {"doctor": 1, "nurse": 0}
    assert p.disconnected("u", 5.0) is None
    assert p.state("u", 5.5) == UserPresence("u", True, 5.5, ("doctor",))
    assert p.disconnected("u", 6.0) == PresenceChange(False, "u", ("doctor",), 6.0)
    assert p.state("u", 7.0) == UserPresence("u", False, 6.0, ("doctor",))
    assert p.role_counts(["doctor"]) == {"doctor": 0}
    assert p.state("never", 7.0) == UserPresence("never", False, None, ())
    assert p.disconnected("never", 8.0) is None  # an unknown device changes nothing
    assert p.online() == {}


def test_presence_policy_public_roles() -> None:
    policy = PresencePolicy(["admin"], ["doctor"])
    doctor = UserPresence("d", True, 1.0, ("doctor",))
    patient = UserPresence("p", False, 3.0, ("patient",))
    assert policy.is_watcher(("admin",)) and not policy.is_watcher(("patient",))
    assert policy.may_query(("patient",))
    assert policy.shown(("patient",), doctor) == doctor
    assert policy.shown(("patient",), patient) == UserPresence("p", False, None, ())
    assert policy.shown(("admin",), patient) == patient
    assert policy.countable(("patient",), "doctor") and not policy.countable(("patient",), "x")
    assert policy.countable(("admin",), "x")
    assert not PresencePolicy(["admin"], []).may_query(("patient",))


# -- router -------------------------------------------------------------------------------


@dataclass(eq=False)
class FakeConn:
    session: Session
    frames: list[bytes] = field(default_factory=list)
    written: int = 0  # bytes, also those of frames cleared by a test

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.written += len(frame)

    def decoded(self) -> list[dict[str, object]]:
        """Every frame written, parsed by websockets' own client-side protocol."""
        client = ClientProtocol(parse_uri("ws://x/"), state=OPEN)
        client.receive_data(b"".join(self.frames))
        return [orjson.loads(f.data) for f in client.events_received() if isinstance(f, Frame)]


def wire(stream: str, seq: int, nid: int) -> dict[str, object]:
    return {
        "id": nid,
        "stream": stream,
        "seq": seq,
        "type": "t",
        "title": "",
        "message": "",
        "data": {},
        "priority": "low",
        "actionUrl": None,
        "read": False,
        "readAt": None,
        "createdAt": "2026-01-01T00:00:00.000000Z",
    }


def events_of(text: str) -> list[dict[str, object]]:
    """The events of a payload body, as channel.Channel.open() hands them to the router."""
    events: list[dict[str, object]] = orjson.loads(text)
    return events


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
    assert (router.frames_out, router.bytes_out) == (13, conn.written)
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


def test_migration_files_are_numbered() -> None:
    found = migrations()
    assert [v for v, _, _ in found] == list(range(1, len(found) + 1))


# -- timers -------------------------------------------------------------------------------


def test_timer_wheel_returns_items_once_when_due() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=100.0, resolution=0.1)
    wheel.schedule("late", 105.0)
    wheel.schedule("soon", 100.25)
    wheel.schedule("past", 50.0)  # already due: comes back on the next pop
    assert len(wheel) == 3
    assert wheel.pop_due(100.05) == ["past"]
    assert wheel.pop_due(100.2) == []
    assert wheel.pop_due(100.31) == ["soon"]
    assert wheel.pop_due(104.9) == []
    assert wheel.pop_due(110.0) == ["late"]
    assert wheel.pop_due(200.0) == [] and len(wheel) == 0


def test_timer_wheel_pops_at_most_the_limit_and_keeps_the_rest_due() -> None:
    wheel: TimerWheel[int] = TimerWheel(now=0.0, resolution=0.1)
    for i in range(5):
        wheel.schedule(i, 0.05)  # one slot
    for i in range(5, 8):
        wheel.schedule(i, 0.15)  # the next
    wheel.schedule(99, 9.0)
    assert wheel.pop_due(1.0, limit=3) == [0, 1, 2]
    wheel.schedule(50, 0.0)  # due now, scheduled between two pops: it waits its turn
    assert wheel.pop_due(1.0, limit=3) == [3, 4, 50]
    assert wheel.pop_due(1.0, limit=3) == [5, 6, 7]
    assert wheel.pop_due(1.0, limit=3) == []
    assert len(wheel) == 1 and wheel.pop_due(9.1) == [99]


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


def test_latency_histogram_exposes_prometheus_buckets() -> None:
    from notifyd.ops.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.0005, 0.0007, 0.004, 20.0):  # a bound holds its equal (le)
        metrics.latency.observe(seconds)
    body = metrics.render().decode()

    def value(series: str) -> float:
        found = re.search(rf"^{re.escape(series)} (\S+)$", body, re.MULTILINE)
        assert found, series
        return float(found.group(1))

    name = "notifyd_delivery_latency_seconds"
    assert value(f'{name}_bucket{{le="0.0005"}}') == 1
    assert value(f'{name}_bucket{{le="0.001"}}') == 2
    assert value(f'{name}_bucket{{le="0.002"}}') == 2
    assert value(f'{name}_bucket{{le="0.005"}}') == 3
    assert value(f'{name}_bucket{{le="10.0"}}') == 3
    assert value(f'{name}_bucket{{le="+Inf"}}') == 4
    assert value(f"{name}_count") == 4
    assert value(f"{name}_sum") == pytest.approx(20.0052)


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
