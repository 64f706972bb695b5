# Property tests (hypothesis) against one in-process daemon per test: random and malformed
# frames, and random bytes on the wire, get one reply each or a documented close code, never a
# crash, and never disturb another user's connection; and for random users (ids that look
# alike), notifications, sync-requests and mark-reads, nobody receives, syncs or marks what is
# not theirs.
#
# How hypothesis runs here: pytest-asyncio 1.x recognises an `async def` test decorated with
# @given and runs each example's coroutine on the suite's session event loop, the same loop
# the async fixtures (fresh database, daemon) were created on. So a test is a plain
# `async def` with @given; the `daemon` fixture is made once per test function and shared by
# all its examples (hence HealthCheck.function_scoped_fixture is suppressed), and each example
# cleans up its own connections. database=None keeps hypothesis from writing .hypothesis/;
# no shrink phase: every example talks to the daemon, and shrinking a failure would re-run
# hundreds of them past the 120 s per-test timeout, so a failure is reported as found.
from __future__ import annotations

import contextlib
import json
import string
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from faults_support import DOCUMENTED_ERRORS, RawClient, http_get, logged_errors
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from support import Client, Daemon, running_daemon
from websockets.exceptions import ConnectionClosed

from notifyd.core.protocol import CLIENT_EVENTS, MAX_REF_LENGTH
from notifyd.core.roles import role_name

SETTINGS = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Close codes a client may be given for bad input (protocol/README.md §9)
BAD_INPUT_CLOSE_CODES = {1002, 1003, 1007, 1008, 1009, 4001}
REPLY_TYPES = {
    "error",
    "pong",
    "notification:sync-response",
    "notification:read",
    "notification:changed",
    "presence:state",
    "auth:refreshed",
}
# What a client's own state changes bring it besides their answer: the changes themselves
CHANGE_TYPES = {"notification:unread-count", "notification:updated", "notification:marked"}


@pytest_asyncio.fixture
async def fuzz_daemon(fresh_db: str) -> AsyncIterator[Daemon]:
    """A daemon whose rate limit does not get in the way: every frame reaches the decoder."""
    async with running_daemon(fresh_db, rate_limit=100000.0, rate_burst=100000) as d:
        yield d


# -- strategies -------------------------------------------------------------------------------

printable = st.characters(exclude_categories=["Cs"])  # lone surrogates cannot be sent
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(printable, max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
stream_names = st.sampled_from(["user:f1", "user:f2", "all", "role:admin", "user:", "x", ""])
field_values = {
    "token": st.text(printable, max_size=40) | json_values,
    "cursors": st.dictionaries(
        stream_names | st.text(max_size=8), st.integers(-3, 2**64) | json_values, max_size=3
    )
    | json_values,
    "since": st.sampled_from(
        ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "yesterday", "2026-13-40T99:00:00+00:00"]
    )
    | json_values,
    "limit": st.integers(-2, 1002) | json_values,
    "ids": st.lists(st.integers(-2, 2**64) | st.booleans() | st.text(max_size=3), max_size=5)
    | json_values,
    "userIds": st.lists(st.text(max_size=5) | st.integers(), max_size=4) | json_values,
    "timestamp": st.integers() | st.floats(allow_nan=False) | st.text(max_size=8) | json_values,
}
data_objects = st.dictionaries(
    st.sampled_from(sorted(field_values)) | st.text(max_size=8),
    json_values,
    max_size=3,
) | st.fixed_dictionaries({}, optional=field_values)
frame_objects = st.fixed_dictionaries(
    {
        "type": st.sampled_from(sorted(CLIENT_EVENTS))
        | st.sampled_from(["error", "pong", "notification:new", "Ping", "ping ", ""])
        | json_values
    },
    optional={
        "data": data_objects | json_values,
        "ref": st.text(printable, min_size=0, max_size=MAX_REF_LENGTH + 4) | json_values,
        "extra": json_values,
    },
)

refs = st.none() | st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)


# Frames that are (nearly) right, so the events' own code runs, not only the decoder.
def _event(kind: str, data: st.SearchStrategy[dict[str, Any]] | None) -> st.SearchStrategy[Any]:
    frame = st.fixed_dictionaries(
        {"type": st.just(kind)} if data is None else {"type": st.just(kind), "data": data}
    )
    return st.tuples(frame, refs).map(lambda t: t[0] if t[1] is None else {**t[0], "ref": t[1]})


well_formed = st.one_of(
    _event("ping", None),
    _event(
        "ping",
        st.fixed_dictionaries({}, optional={"timestamp": st.integers() | st.text(max_size=5)}),
    ),
    _event(
        "notification:sync-request",
        st.fixed_dictionaries(
            {},
            optional={
                "cursors": st.dictionaries(stream_names, st.integers(0, 5), max_size=2),
                "limit": st.integers(0, 1001),
                "since": st.just("2026-01-01T00:00:00Z"),
            },
        ),
    ),
    _event(
        "notification:mark-read",
        st.fixed_dictionaries({"ids": st.lists(st.integers(0, 9), max_size=3)}),
    ),
    _event("notification:mark-all-read", st.just({})),
    _event(
        "presence:query",
        st.fixed_dictionaries({"userIds": st.lists(st.text(max_size=3), max_size=2)}),
    ),
    _event("auth", st.fixed_dictionaries({"token": st.text(printable, max_size=30)})),
)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=bool(len(str(value)) % 2))  # NaN/2**70 included


def _split(text: str) -> list[str] | str:
    return [text[: len(text) // 2], text[len(text) // 2 :]] if text else text


messages = st.one_of(
    # now and then a frame over the 65536-byte limit: 1009
    st.tuples(st.integers(0, 30), st.text(printable, max_size=80)).map(
        lambda t: "x" * 70000 if t[0] == 30 else t[1]
    ),
    json_values.map(_json),
    frame_objects.map(_json),
    well_formed.map(_json),
    well_formed.map(_json).map(_split),  # a fragmented message
    frame_objects.map(_json).map(_split),
    st.binary(max_size=64),
)


def expected_ref(message: str | bytes | list[str]) -> str | None:
    """The ref the reply to `message` must carry: that of a decodable object frame."""
    if isinstance(message, bytes):
        return None
    text = "".join(message) if isinstance(message, list) else message
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(frame, dict):
        return None
    ref = frame.get("ref")
    return ref if isinstance(ref, str) and 1 <= len(ref) <= MAX_REF_LENGTH else None


class FuzzState:
    """Connections shared by the examples of one test: the fuzzed one (replaced when the
    server closes it) and a bystander of another user."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.fuzzed: Client | None = None
        self.bystander: Client | None = None
        self.notes = 0


STATES: dict[int, FuzzState] = {}


async def check_daemon_and_bystander(state: FuzzState) -> None:
    d = state.d
    assert d.app.ready
    assert await http_get(d.app.port, "/healthz") == (200, b"ok\n")
    if state.bystander is None:
        state.bystander = await d.connect("f2")
    by = state.bystander
    assert (await by.request("ping", {"timestamp": state.notes}, "pong"))["data"] == {
        "timestamp": state.notes
    }
    state.notes += 1
    await d.notify("f2", f"note {state.notes}")
    n = (await by.next_data("notification:new"))["notification"]
    assert n["title"] == f"note {state.notes}" and n["stream"] == "user:f2"
    assert [f for f in by.seen if f["type"] == "error"] == []


# -- a. random and malformed frames -----------------------------------------------------------


@settings(SETTINGS, max_examples=60)
@given(batch=st.lists(messages, min_size=1, max_size=8))
async def test_random_frames_get_one_reply_each_or_a_documented_close(
    fuzz_daemon: Daemon, batch: list[Any]
) -> None:
    d = fuzz_daemon
    state = STATES.setdefault(id(d), FuzzState(d))
    with logged_errors() as errors:
        if state.fuzzed is None:
            state.fuzzed = await d.connect("f1")
        client = state.fuzzed
        client.seen.clear()
        closed = False
        try:
            for message in batch:
                await client.ws.send(message)
            replies: list[dict[str, Any]] = []
            while len(replies) < len(batch):
                frame = await client.recv(3)
                if frame["type"] in REPLY_TYPES:
                    replies.append(frame)
            replies += [f for f in await client.quiet(0.05) if f["type"] in REPLY_TYPES]
        except ConnectionClosed:
            closed = True
        if closed:
            code, _ = await client.closed()
            event(f"closed with {code}")
            assert code in BAD_INPUT_CLOSE_CODES, (code, batch)
            if code == 1009:  # the only close this daemon should need here
                assert any(len(m) > 65536 for m in batch if isinstance(m, str))
            state.fuzzed = None
        else:
            # exactly one reply per message, carrying its ref when it had a valid one
            assert len(replies) == len(batch), (replies, batch)
            assert Counter(f.get("ref") for f in replies if "ref" in f) == Counter(
                r for r in map(expected_ref, batch) if r is not None
            )
            for frame in client.seen:
                assert frame["type"] in REPLY_TYPES | CHANGE_TYPES, frame
                if frame["type"] == "error":
                    assert frame["data"]["code"] in DOCUMENTED_ERRORS, frame
                    event(f"error {frame['data']['code']}")
                else:
                    event(f"reply {frame['type']}")
            assert (await client.request("ping", {}, "pong", ref="alive"))["type"] == "pong"
        await check_daemon_and_bystander(state)
    assert not errors, [r.getMessage() for r in errors]


def _raw_frame(fin: bool, rsv: int, opcode: int, masked: bool, payload: bytes, key: bytes) -> bytes:
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    length = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
    if masked:
        length = bytes([length[0] | 0x80]) + length[1:]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return head + length + key + payload
    return head + length + payload


wire_frames = st.builds(
    _raw_frame,
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1, 4]),
    opcode=st.sampled_from([0, 1, 1, 1, 2, 3, 8, 9, 10, 11, 15]),
    masked=st.booleans() | st.just(True),
    payload=st.binary(max_size=40)
    | st.text(printable, max_size=40).map(str.encode)
    | frame_objects.map(_json).map(str.encode),
    key=st.binary(min_size=4, max_size=4),
)


@settings(SETTINGS, max_examples=60)
@example(chunks=[b"\x88\x80\x00\x00\x00\x00"])  # a masked close frame without a status code
@given(chunks=st.lists(wire_frames | st.binary(min_size=1, max_size=30), min_size=1, max_size=5))
async def test_random_bytes_on_the_wire_end_in_a_documented_close(
    fuzz_daemon: Daemon, chunks: list[bytes]
) -> None:
    d = fuzz_daemon
    state = STATES.setdefault(id(d), FuzzState(d))
    with logged_errors() as errors:
        raw = await RawClient.open(f"{d.url}?token={d.token('f3')}", rcvbuf=65536)
        try:
            raw.writer.write(b"".join(chunks))
            raw.writer.write_eof()  # then nothing more: the server must finish the connection
            await raw.read_to_end(10)
        finally:
            raw.close()
        ours = {int.from_bytes(c[-2:], "big") for c in chunks if len(c) >= 4}  # echoed closes
        if any(len(c) >= 2 and c[0] & 0x0F == 0x8 and c[1] & 0x7F == 0 for c in chunks):
            ours.add(1005)  # a close without a code is echoed without one (RFC 6455 5.5.1)
        close = raw.close_frame
        event(f"closed with {close.code}" if close else "ended without a close frame")
        if close is not None:
            assert close.code in BAD_INPUT_CLOSE_CODES | {1000} | ours, (close, chunks)
        for frame in raw.texts:
            if frame["type"] == "error":
                assert frame["data"]["code"] in DOCUMENTED_ERRORS, frame
        await check_daemon_and_bystander(state)
    assert not errors, [r.getMessage() for r in errors]


# -- b. isolation -----------------------------------------------------------------------------

USERS = ["1", "11", "1 ", " 1", "user:1", "a", "A", "all", "role:a", "é"]
ROLES = ["a", "A", "b", "all", "user:1", "1", "a "]
STREAMS = sorted(
    {f"user:{u}" for u in USERS}
    | {f"role:{r.lower()}" for r in ROLES}
    | {"all", "user:", "role:", "User:1", "user:1\n", "ALL"}
)


def own_streams(user: str, roles: list[str]) -> set[str]:
    """A token's streams: a role that is no role name (\"a \") is dropped."""
    named = (role_name(r) for r in roles)
    return {f"user:{user}", *(f"role:{r}" for r in named if r is not None), "all"}


index = st.integers(0, 3)
cursor_key = st.tuples(st.just("own"), st.integers(0, 5)) | st.tuples(
    st.just("any"), st.sampled_from(STREAMS)
)
actions = st.one_of(
    st.tuples(st.just("notify"), st.sampled_from(USERS) | index),  # index: a connected user
    st.tuples(st.just("notify_role"), st.sampled_from(ROLES)),
    st.tuples(st.just("broadcast")),
    st.tuples(
        st.just("sync"),
        index,
        st.lists(st.tuples(cursor_key, st.integers(0, 6)), max_size=3),
        st.none() | st.integers(1, 4),
    ),
    st.tuples(
        st.just("mark"),
        index,
        st.lists(
            st.tuples(st.sampled_from(["own", "any"]), st.integers(0, 1000)), min_size=1, max_size=5
        ),
    ),
    st.tuples(st.just("mark_all"), index),
    st.tuples(st.just("refresh"), index, st.sampled_from(USERS)),
)
connections = st.lists(
    st.tuples(st.sampled_from(USERS), st.lists(st.sampled_from(ROLES), max_size=3)),
    min_size=1,
    max_size=4,
)


@settings(SETTINGS, max_examples=50)
@given(conns=connections, steps=st.lists(actions, min_size=1, max_size=12))
async def test_nobody_receives_syncs_or_marks_what_is_not_theirs(
    daemon: Daemon, conns: list[tuple[str, list[str]]], steps: list[tuple[Any, ...]]
) -> None:
    d = daemon
    rows = {
        r["id"]: (r["stream"], r["read_at"])
        for r in await (await d.pool()).fetch(
            "SELECT id, stream, read_at FROM notifyd.notifications"
        )
    }
    # own items unread as their user sees them (an earlier example's mark-all covers some)
    unread = {
        r["id"]
        for r in await (await d.pool()).fetch(
            "SELECT id FROM notifyd.notifications n WHERE user_id IS NOT NULL "
            "AND NOT (notifyd.to_wire(n, n.stream)->>'read')::boolean"
        )
    }
    stream_of = {i: s for i, (s, _) in rows.items()}
    created: list[int] = []
    marked_by: dict[int, str] = {}  # id -> the user stream whose connection marked it
    read_shared: set[tuple[str, int]] = set()  # (user, id) of shared items each user read
    clients = [await d.connect(user, roles) for user, roles in conns]
    mine = [own_streams(user, roles) for user, roles in conns]
    # per connection: (index in client.seen from which it holds, the streams) for each set of
    # streams it held: a refresh replaces them, and its reply divides what came before and after
    held = [[(0, own)] for own in mine]
    try:
        for n, step in enumerate(steps):
            await _run_step(
                d, step, n, clients, conns, mine, stream_of, unread, created, marked_by, read_shared
            )
            if step[0] == "refresh":
                i = step[1] % len(clients)
                if held[i][-1][1] != mine[i]:
                    held[i].append((len(clients[i].seen), mine[i]))
        # settle: a full sync ends any paging, then a broadcast marks the end of the stream
        for i, client in enumerate(clients):
            result = await client.sync({}, limit=1000)
            assert set(result["cursors"]) == mine[i]
        marker = await d.sql("SELECT notifyd.broadcast('iso', 'end', 'm')")
        created.append(marker)
        for client in clients:
            while (await client.next_data("notification:new"))["notification"]["id"] != marker:
                pass
        after = {
            r["id"]: (r["stream"], r["read_at"])
            for r in await (await d.pool()).fetch(
                "SELECT id, stream, read_at FROM notifyd.notifications"
            )
        }
        for i, (stream, read_at) in after.items():
            before = rows.get(i, (stream, None))[1]
            if read_at != before:  # only its own user's connection may have changed it
                assert marked_by.get(i) == stream, (i, stream, marked_by.get(i))
        for i, ((user, _), client) in enumerate(zip(conns, clients, strict=True)):
            received: set[int] = set()
            for k, frame in enumerate(client.seen):
                kind, data = frame["type"], frame["data"]
                streams = next(own for start, own in reversed(held[i]) if start <= k)
                if kind == "notification:new":
                    assert data["notification"]["stream"] in streams, (user, frame)
                    received.add(data["notification"]["id"])
                elif kind == "notification:sync-response":
                    for item in data["notifications"]:
                        assert item["stream"] in streams, (user, item)
                        received.add(item["id"])
                    assert set(data["cursors"]) == streams
                elif kind == "notification:read":
                    assert all(after[x][0] in streams for x in data["ids"]), frame
                elif kind == "notification:updated":
                    assert data["notification"]["stream"] in streams, (user, frame)
                elif kind == "notification:marked":  # the user's own marks (no content)
                    assert data["stream"] == f"user:{user}"
                elif kind == "notification:deleted":
                    assert data["stream"] in streams
                assert not kind.startswith("presence:"), frame  # no presence role here
            # and each got what is theirs (so the checks above are not vacuous)
            theirs = {x for x in created if after[x][0] in mine[i]}
            assert theirs <= received, (user, sorted(theirs - received))
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
            d.clients.remove(client)


async def _run_step(
    d: Daemon,
    step: tuple[Any, ...],
    n: int,
    clients: list[Client],
    conns: list[tuple[str, list[str]]],
    mine: list[set[str]],
    stream_of: dict[int, str],
    unread: set[int],
    created: list[int],
    marked_by: dict[int, str],
    read_shared: set[tuple[str, int]],
) -> None:
    kind = step[0]
    if kind in ("notify", "notify_role", "broadcast"):
        if kind == "notify":
            user = step[1] if isinstance(step[1], str) else conns[step[1] % len(conns)][0]
            nid = await d.sql("SELECT notifyd.notify($1, 'iso', $2, 'm')", user, f"s{n}")
            stream = f"user:{user}"
        elif kind == "notify_role":
            named = role_name(step[1])
            if named is None:  # no role name: refused, as a token's role of it is dropped
                with pytest.raises(asyncpg.CheckViolationError):
                    await d.sql("SELECT notifyd.notify_role($1, 'iso', $2, 'm')", step[1], f"s{n}")
                return
            nid = await d.sql("SELECT notifyd.notify_role($1, 'iso', $2, 'm')", step[1], f"s{n}")
            stream = f"role:{named}"
        else:
            nid = await d.sql("SELECT notifyd.broadcast('iso', $1, 'm')", f"s{n}")
            stream = "all"
        created.append(nid)
        stream_of[nid] = stream
        if stream.startswith("user:"):
            unread.add(nid)
        return
    i = step[1] % len(clients)
    client, (user, _roles), own = clients[i], conns[i], mine[i]
    if kind == "sync":
        ordered = sorted(own)
        cursors = {
            (ordered[k % len(ordered)] if where == "own" else k): seq for (where, k), seq in step[2]
        }
        data: dict[str, Any] = {"cursors": cursors}
        if step[3] is not None:
            data["limit"] = step[3]
        reply = await client.request(
            "notification:sync-request", data, "notification:sync-response", ref=f"sync-{n}"
        )
        event(f"sync {'allowed' if set(cursors) <= own else 'forbidden'}")
        if set(cursors) <= own:
            assert reply["type"] == "notification:sync-response", (user, cursors, reply)
            assert {x["stream"] for x in reply["data"]["notifications"]} <= own
        else:
            assert reply["type"] == "error" and reply["data"]["code"] == "forbidden", reply
    elif kind in ("mark", "mark_all"):
        everyone = sorted(stream_of)
        theirs = [x for x in everyone if stream_of[x] == f"user:{user}"]

        def pick(where: str, k: int) -> int:
            ids = theirs if where == "own" and theirs else everyone
            return ids[k % len(ids)] if ids else k + 1

        if kind == "mark":
            ids = sorted({pick(where, k) for where, k in step[2]})
            # shared items this user read in earlier examples (the database outlives them)
            for row in await (await d.pool()).fetch(
                "SELECT n.id FROM notifyd.notifications n WHERE n.id = ANY($1::bigint[]) "
                "AND n.user_id IS NULL AND (notifyd.to_wire(n, $2)->>'read')::boolean",
                ids,
                f"user:{user}",
            ):
                read_shared.add((user, row["id"]))
            reply = await client.request(
                "notification:mark-read", {"ids": ids}, "notification:read", ref=f"mark-{n}"
            )
            # its own unread items, and the shared ones of its streams it has not read yet
            expected = sorted(
                x
                for x in ids
                if (stream_of.get(x) == f"user:{user}" and x in unread)
                or (
                    stream_of.get(x) in own
                    and not stream_of[x].startswith("user:")
                    and (user, x) not in read_shared
                )
            )
        else:
            ids = sorted(stream_of)
            reply = await client.request(
                "notification:mark-all-read", {}, "notification:read", ref=f"mark-{n}"
            )
            expected = []  # a mark: no item is written
        assert reply["type"] == "notification:read", reply
        assert reply["data"]["ids"] == expected, (user, ids, reply)
        foreign = any(stream_of.get(x) not in own for x in ids)
        event(
            f"{kind} changed {'some' if expected else 'nothing'}"
            f"{', foreign ids asked' if foreign else ''}"
        )
        for x in ids if kind == "mark_all" else expected:
            if stream_of.get(x) == f"user:{user}":
                unread.discard(x)
                marked_by[x] = f"user:{user}"
            elif stream_of.get(x) in own:
                read_shared.add((user, x))
    elif kind == "refresh":
        token = d.token(step[2], ["a"])
        reply = await client.request("auth", {"token": token}, "auth:refreshed", ref=f"auth-{n}")
        if step[2] == user:
            assert reply["type"] == "auth:refreshed", reply
            mine[i] = own_streams(user, ["a"])  # the fresh token's roles replace the old
        else:
            assert reply["data"]["code"] == "auth-user-mismatch", reply
