# Bad input from clients: every case gets its documented error frame or close code, the
# connection that sent it behaves as documented, and other connections are unharmed.
from __future__ import annotations

import asyncio

import orjson
import pytest
from support import Daemon, http_request, running_daemon
from websockets.exceptions import InvalidStatus
from wire_support import CONT, TEXT, WireClient, frame

BAD_FRAMES = [
    ("not json at all", "invalid-json"),
    ("[1, 2]", "invalid-frame"),
    ('{"data": {}}', "invalid-frame"),
    ('{"type": 5}', "invalid-frame"),
    ('{"type": "ping", "data": []}', "invalid-frame"),
    ('{"type": "ping", "ref": 7}', "invalid-frame"),
    ('{"type": "ping", "ref": ""}', "invalid-frame"),
    ('{"type": "ping", "extra": 1}', "invalid-frame"),
    ('{"type": "nope"}', "unknown-event"),
    ('{"type": "notification:mark-read", "data": {"ids": ["x"]}}', "invalid-data"),
    ('{"type": "notification:mark-read", "data": {"ids": []}}', "invalid-data"),
    ('{"type": "notification:mark-read", "data": {"ids": [true]}}', "invalid-data"),
    ('{"type": "notification:sync-request", "data": {"limit": 0}}', "invalid-data"),
    ('{"type": "notification:sync-request", "data": {"cursors": {"user:1": -1}}}', "invalid-data"),
    ('{"type": "notification:sync-request", "data": {"cursors": []}}', "invalid-data"),
    ('{"type": "notification:sync-request", "data": {"since": "yesterday"}}', "invalid-data"),
    (
        '{"type": "notification:sync-request", "data": {"since": "2026-01-01T00:00:00"}}',
        "invalid-data",
    ),
    ('{"type": "presence:query", "data": {"userIds": [1]}}', "invalid-data"),
    ('{"type": "presence:query", "data": {}}', "invalid-data"),
    ('{"type": "presence:query", "data": {"userIds": [], "roles": []}}', "invalid-data"),
    ('{"type": "presence:query", "data": {"roles": "doctor"}}', "invalid-data"),
    ('{"type": "presence:query", "data": {"roles": [""]}}', "invalid-data"),
    ('{"type": "ping", "data": {"timestamp": {}}}', "invalid-data"),
    ('{"type": "auth", "data": {"token": ""}}', "invalid-data"),
    # times that are no moment of UTC's years 1 to 9999
    (
        '{"type": "notification:sync-request", "data": {"since": "0001-01-01T00:00:00+14:00"}}',
        "invalid-data",
    ),
    (
        '{"type": "notification:sync-request", "data": {"since": "9999-12-31T23:59:59-14:00"}}',
        "invalid-data",
    ),
    # numbers past a bigint, or past a double
    ('{"type": "notification:mark-read", "data": {"ids": [18446744073709551615]}}', "invalid-data"),
    (
        '{"type": "notification:mark-read", "data": {"ids": [100000000000000000000000000000]}}',
        "invalid-data",
    ),
    ('{"type": "notification:sync-request", "data": {"cursors": {"all": 1e30}}}', "invalid-data"),
    ('{"type": "ping", "data": {"timestamp": 1e400}}', "invalid-json"),
    ('{"type": "ping", "data": {"timestamp": NaN}}', "invalid-json"),
    # presence roles are role names, as token roles are
    ('{"type": "presence:query", "data": {"roles": ["\\u0130T"]}}', "invalid-data"),
    ('{"type": "presence:query", "data": {"roles": ["' + "x" * 129 + '"]}}', "invalid-data"),
    # a field the event does not define: one per event
    ('{"type": "auth", "data": {"token": "t", "roles": ["admin"]}}', "invalid-data"),
    ('{"type": "notification:sync-request", "data": {"cursor": {"all": 3}}}', "invalid-data"),
    ('{"type": "notification:mark-read", "data": {"ids": [1], "all": true}}', "invalid-data"),
    ('{"type": "notification:mark-all-read", "data": {"ids": [1]}}', "invalid-data"),
    ('{"type": "presence:query", "data": {"userIds": ["1"], "role": ["admin"]}}', "invalid-data"),
    ('{"type": "ping", "data": {"timestamp": 1, "ts": 2}}', "invalid-data"),
]


@pytest.mark.parametrize(("text", "code"), BAD_FRAMES)
async def test_bad_frame_gets_documented_error_and_connection_survives(
    daemon: Daemon, text: str, code: str
) -> None:
    client = await daemon.connect("b1")
    bystander = await daemon.connect("b2")
    await client.ws.send(text)
    error = await client.next_data("error")
    assert error["code"] == code and error["message"]
    # the same connection still works, and so does the other one
    pong = await client.request("ping", {"timestamp": 1}, "pong")
    assert pong["data"] == {"timestamp": 1}
    await daemon.notify("b2", "still fine")
    assert (await bystander.next_data("notification:new"))["notification"]["title"] == "still fine"


async def test_error_echoes_ref(daemon: Daemon) -> None:
    client = await daemon.connect("b3")
    reply = await client.request("notification:mark-read", {"ids": ["x"]}, "error", ref="m-9")
    assert reply["type"] == "error" and reply["ref"] == "m-9"
    assert reply["data"]["code"] == "invalid-data" and "ids" in reply["data"]["message"]
    pong = await client.request("ping", {}, "pong", ref="p-1")
    assert isinstance(pong["data"]["timestamp"], int)


async def test_binary_frames_are_refused_with_an_error(daemon: Daemon) -> None:
    client = await daemon.connect("b4")
    await client.ws.send(b"\x00\x01binary")
    assert (await client.next_data("error"))["code"] == "binary-not-supported"
    assert (await client.request("ping", {}, "pong"))["type"] == "pong"


async def test_fragmented_text_message_is_reassembled(daemon: Daemon) -> None:
    client = await daemon.connect("b5")
    frame = orjson.dumps({"type": "ping", "data": {"timestamp": 42}, "ref": "frag"}).decode()
    await client.ws.send([frame[:10], frame[10:20], frame[20:]])
    pong = await client.expect("pong")
    assert pong["data"]["timestamp"] == 42 and pong["ref"] == "frag"


async def test_frame_over_the_size_limit_closes_with_1009(daemon: Daemon) -> None:
    client = await daemon.connect("b6")
    bystander = await daemon.connect("b7")
    await client.ws.send("x" * (daemon.settings.max_frame_bytes + 1))
    code, _ = await client.closed()
    assert code == 1009
    assert (await bystander.request("ping", {}, "pong"))["type"] == "pong"


async def test_events_before_authentication_are_refused(daemon: Daemon) -> None:
    client = await daemon.raw()  # no token: must authenticate with a first frame
    reply = await client.request("notification:sync-request", {}, "error", ref="early")
    assert reply["data"]["code"] == "not-authenticated"
    await client.send("auth", {"token": daemon.token("b8")})
    assert (await client.next_data("connection-confirmed"))["userId"] == "b8"


async def test_plain_http_routes(daemon: Daemon) -> None:
    async def get(path: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        status = int(data.split(b" ", 2)[1])
        return status, data.split(b"\r\n\r\n", 1)[1]

    assert await get("/healthz") == (200, b"ok\n")
    assert await get("/readyz") == (200, b"ready\n")
    assert (await get("/nope"))[0] == 404
    assert (await get("/ws"))[0] == 426  # a browser opening the WebSocket URL directly


async def test_garbage_instead_of_http_is_dropped(daemon: Daemon) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
    writer.write(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    client = await daemon.connect("b9")
    assert (await client.request("ping", {}, "pong"))["type"] == "pong"


async def test_wrong_path_for_websocket_is_404(daemon: Daemon) -> None:
    with pytest.raises(InvalidStatus) as info:
        from websockets.asyncio.client import connect

        await connect(f"ws://127.0.0.1:{daemon.app.port}/other")
    assert info.value.response.status_code == 404


def handshake_request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_frame_sent_right_behind_the_request_is_not_lost(daemon: Daemon) -> None:
    from websockets.frames import Frame, Opcode

    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
    ping = orjson.dumps({"type": "ping", "data": {"timestamp": 7}, "ref": "early"})
    frame = Frame(Opcode.TEXT, ping).serialize(mask=True, extensions=[])
    writer.write(handshake_request(f"/ws?token={daemon.token('p1')}") + frame)  # one write
    data = b""
    async with asyncio.timeout(5):
        while b'"ref":"early"' not in data:
            chunk = await reader.read(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101")
    writer.close()


async def test_oversized_or_unfinished_handshakes_harm_nobody(daemon: Daemon) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
    writer.write(b"GET /ws HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:40]
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    client = await daemon.connect("p2")
    assert (await client.request("ping", {}, "pong"))["type"] == "pong"


async def test_silent_tcp_connection_is_dropped_at_the_handshake_deadline(fresh_db: str) -> None:
    async with running_daemon(fresh_db, auth_timeout=0.3) as d:
        reader, writer = await asyncio.open_connection("127.0.0.1", d.app.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # sent nothing: aborted
        writer.close()
        assert not d.app.connections


async def test_an_unknown_field_is_named_and_nothing_is_done(daemon: Daemon) -> None:
    """mark-all-read with ids marks nothing; a sync-request with `cursor` is no sync."""
    client = await daemon.connect("u1")
    await daemon.notify("u1", "stays unread")
    reply = await client.request("notification:mark-all-read", {"ids": [1]}, "notification:read")
    assert reply["data"]["code"] == "invalid-data"
    assert "data.ids" in reply["data"]["message"]
    reply = await client.request(
        "notification:sync-request", {"cursor": {"user:u1": 0}}, "notification:sync-response"
    )
    assert reply["data"]["code"] == "invalid-data"
    assert reply["data"]["message"].startswith("data.cursor: not a field")
    assert await daemon.sql("SELECT count(*) FROM notifyd.notifications WHERE read_at IS NULL") == 1


async def test_a_time_out_of_range_before_authentication_is_answered(daemon: Daemon) -> None:
    """Decoded before the auth check: an error frame, not a dropped connection."""
    client = await daemon.raw()
    reply = await client.request(
        "notification:sync-request", {"since": "0001-01-01T00:00:00+14:00"}, "error", ref="early"
    )
    assert reply["data"]["code"] == "invalid-data" and "since" in reply["data"]["message"]
    await client.send("auth", {"token": daemon.token("t1")})
    assert (await client.next_data("connection-confirmed"))["userId"] == "t1"


HTTP_BAD = [
    ("POST", "/v1/notifications/read?ids=%C2%B2", "invalid-data"),  # '²' is a digit to isdigit
    ("POST", "/v1/notifications/read?ids=" + "9" * 5000, "invalid-data"),
    ("POST", "/v1/notifications/read?ids=9223372036854775808", "invalid-data"),
    ("POST", "/v1/notifications/read?ids=1&id=2", "invalid-data"),
    ("POST", "/v1/notifications/read-all?ids=1", "invalid-data"),
    ("GET", "/v1/notifications?cursor=user:h1:%C2%B2", "invalid-data"),
    ("GET", "/v1/notifications?cursor=user:h1:" + "1" * 5000, "invalid-data"),
    ("GET", "/v1/notifications?limit=%C2%B2", "invalid-data"),
    ("GET", "/v1/notifications?limit=" + "1" * 5000, "invalid-data"),
    ("GET", "/v1/notifications?since=0001-01-01T00:00:00%2B14:00", "invalid-data"),
    ("GET", "/v1/notifications?cursors=user:h1:0", "invalid-data"),
    ("GET", "/v1/unread-count?user=someone", "invalid-data"),
]


@pytest.mark.parametrize(
    ("method", "path", "code"), HTTP_BAD, ids=[f"{m} {p[:60]}" for m, p, _ in HTTP_BAD]
)
async def test_bad_http_input_gets_its_documented_status(
    daemon: Daemon, method: str, path: str, code: str
) -> None:
    await daemon.notify("h1", "stays unread")
    bearer = {"Authorization": f"Bearer {daemon.token('h1')}"}
    status, headers, body = await http_request(daemon.app.port, method, path, bearer)
    assert (status, orjson.loads(body)["code"]) == (400, code), body
    assert headers["content-type"] == "application/json"
    assert await daemon.sql("SELECT count(*) FROM notifyd.notifications WHERE read_at IS NULL") == 1


async def test_a_header_given_twice_is_refused(daemon: Daemon) -> None:
    token = daemon.token("h2")
    status, _, body = await http_request(
        daemon.app.port,
        "GET",
        "/v1/unread-count",
        {"Authorization": f"Bearer {token}", "authorization": f"Bearer {token}"},
    )
    assert (status, orjson.loads(body)["code"]) == (400, "invalid-data")
    status, _, body = await http_request(
        daemon.app.port,
        "GET",
        f"/v1/unread-count?token={token}",
        {"Origin": "https://a.example", "origin": "https://b.example"},
    )
    assert (status, orjson.loads(body)["code"]) == (400, "invalid-data")


async def test_a_database_error_in_mark_read_is_answered(daemon: Daemon) -> None:
    """An error of the UPDATE itself (here an app's trigger; a statement timeout is another):
    the WebSocket frame gets `unavailable`, the HTTP request 503, and the connection lives."""
    await daemon.sql(
        "CREATE FUNCTION refuse_reads() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'reads are closed'; END $$"
    )
    await daemon.sql(
        "CREATE TRIGGER refuse_reads BEFORE UPDATE ON notifyd.notifications "
        "FOR EACH ROW EXECUTE FUNCTION refuse_reads()"
    )
    await daemon.sql(  # mark-all-read writes marks
        "CREATE TRIGGER refuse_reads BEFORE INSERT OR UPDATE ON notifyd.marks "
        "FOR EACH ROW EXECUTE FUNCTION refuse_reads()"
    )
    client = await daemon.connect("d1")
    nid = await daemon.notify("d1", "unread")
    for kind, data in (
        ("notification:mark-read", {"ids": [nid]}),
        ("notification:mark-all-read", {}),
    ):
        reply = await client.request(kind, data, "notification:read", ref=f"r-{kind}")
        assert (reply["type"], reply["data"]["code"]) == ("error", "unavailable")
    status, _, body = await http_request(
        daemon.app.port,
        "POST",
        f"/v1/notifications/read?ids={nid}",
        {"Authorization": f"Bearer {daemon.token('d1')}"},
    )
    assert (status, orjson.loads(body)["code"]) == (503, "unavailable")
    assert (await client.request("ping", {}, "pong"))["type"] == "pong"


async def test_an_operation_that_fails_unexpectedly_is_still_answered(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong in a spawned client operation, its frame gets an answer, and a
    sync that failed so leaves the connection able to sync again."""
    client = await daemon.connect("i1")

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    real_sync = daemon.app.store.sync
    for name in ("set_state", "sync"):
        monkeypatch.setattr(daemon.app.store, name, broken)
    reply = await client.request("notification:mark-read", {"ids": [1]}, "notification:read")
    assert (reply["type"], reply["data"]["code"]) == ("error", "internal-error")
    reply = await client.request(
        "notification:sync-request", {}, "notification:sync-response", ref="s1"
    )
    assert (reply["type"], reply["data"]["code"]) == ("error", "internal-error")
    status, _, body = await http_request(
        daemon.app.port,
        "POST",
        "/v1/notifications/read-all",
        {"Authorization": f"Bearer {daemon.token('i1')}"},
    )
    assert (status, orjson.loads(body)["code"]) == (500, "internal-error")
    monkeypatch.setattr(daemon.app.store, "sync", real_sync)
    assert (await client.sync())["cursors"]["user:i1"] == 0


async def test_connection_confirmed_carries_the_ref_of_the_auth_frame(daemon: Daemon) -> None:
    client = await daemon.raw()
    await client.send("auth", {"token": daemon.token("r1")}, ref="auth-1")
    confirmed = await client.expect("connection-confirmed")
    assert confirmed["ref"] == "auth-1" and confirmed["data"]["userId"] == "r1"
    unref = await daemon.raw()
    await unref.send("auth", {"token": daemon.token("r2")})
    assert "ref" not in await unref.expect("connection-confirmed")


@pytest.mark.parametrize(
    "fragments",
    [
        [b'{"type": "ping", "ref": "\xff"}'],  # not UTF-8 at all
        [b'{"type": "ping", "ref": "\xed\xa0\x80"}'],  # an encoded surrogate
        [b'{"type": "ping", "ref": "\xe2\x82'],  # a sequence cut short by the end of the message
        [b'{"type": "ping", "ref": "\xe2', b'\x28"}'],  # a bad sequence across two fragments
    ],
)
async def test_invalid_utf8_in_a_text_message_closes_with_1007(
    daemon: Daemon, fragments: list[bytes]
) -> None:
    client = await WireClient.open(daemon.app.port, f"?token={daemon.token('u1')}")
    try:
        *first, last = fragments
        for i, part in enumerate(first):
            client.send(frame(TEXT if i == 0 else CONT, part, fin=False))
        client.send(frame(CONT if first else TEXT, last))
        await client.read_until(lambda c: c.close_code is not None, 10)
        assert client.close_code == 1007
        assert [t for t in client.texts if t["type"] == "error"] == []
    finally:
        client.close()


async def test_utf8_split_across_fragments_is_fine(daemon: Daemon) -> None:
    client = await WireClient.open(daemon.app.port, f"?token={daemon.token('u2')}")
    try:
        whole = '{"type": "ping", "ref": "caf\u00e9"}'.encode()
        cut = whole.index(b"\xc3") + 1  # between the two bytes of é
        client.send(frame(TEXT, whole[:cut], fin=False) + frame(CONT, whole[cut:]))
        await client.read_until(lambda c: any(t["type"] == "pong" for t in c.texts), 10)
        assert next(t for t in client.texts if t["type"] == "pong")["ref"] == "caf\u00e9"
    finally:
        client.close()


async def test_a_fragmented_message_over_the_size_limit_closes_with_1009(
    daemon: Daemon,
) -> None:
    """The limit is per message: fragments each under it add up."""
    client = await WireClient.open(daemon.app.port, f"?token={daemon.token('u3')}")
    try:
        part = b"x" * (daemon.settings.max_frame_bytes // 2)
        client.send(
            frame(TEXT, b"[" + part, fin=False)
            + frame(CONT, part, fin=False)
            + frame(CONT, part + b"]")
        )
        await client.read_until(lambda c: c.close_code is not None, 10)
        assert client.close_code == 1009
    finally:
        client.close()


async def test_an_unsupported_websocket_version_gets_426_naming_13(daemon: Daemon) -> None:
    client = await WireClient.open(
        daemon.app.port, f"?token={daemon.token('u4')}", version="8", expect=426
    )
    try:
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in client.head
    finally:
        client.close()
