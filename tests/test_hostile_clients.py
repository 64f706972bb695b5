# Property test (hypothesis): hostile clients on raw TCP against one in-process daemon. Each
# example runs a few clients at once, each sending random frames (valid and invalid opcodes,
# masks, reserved bits, fragments, control frames, oversize, invalid UTF-8), floods of one
# frame, or bare bytes, reading everything, slowly or nothing, and ending with a reset, a FIN,
# a close frame or not at all. Throughout, what the daemon holds for any connection stays
# within the send bound plus one frame (and its kernel socket within TCP_NOTSENT_LOWAT and the
# window), and a reassembled message within the frame limit;
# afterwards a well-behaved client still gets what was inserted meanwhile, and a client that
# kept reading and did not end the connection itself got a close frame for every close.
# The run is bounded: a few dozen examples of under a second each (see test_properties.py for
# how hypothesis runs on the suite's event loop).
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest_asyncio
from faults_support import logged_errors
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from support import Client, Daemon, running_daemon
from wire_support import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    WireClient,
    close_frame,
    frame,
)

from notifyd.edge.server import KERNEL_UNSENT, Connection, kernel_queue

BOUND = 16384  # NOTIFYD_MAX_SEND_BUFFER here
MAX_FRAME = 4096  # NOTIFYD_MAX_FRAME_BYTES here
# The largest single write the daemon makes to a hostile client (an error frame, a pong, a
# close frame; never a notification: they have none): the "one frame" beyond the bound.
ONE_FRAME = 1024
# The kernel's share of a connection: its unsent bytes stay under TCP_NOTSENT_LOWAT (plus what
# one write puts in at once), and the rest is in flight within the client's small window.
KERNEL_SHARE = KERNEL_UNSENT + 128 * 1024
# websockets' reader holds what came in one read (asyncio reads up to 256 kB) and is not
# yet parsed: at most a frame's worth past what it parses at once.
READ_CHUNK = 256 * 1024
RSS_GROWTH_LIMIT = 100 << 20
# A client that is reading may get these close codes for what it sent (protocol/README.md
# §9), or the echo of a close frame of its own (1005 for one without a code; random payloads
# may hold any application code).
CLOSE_CODES = {1000, 1002, 1005, 1007, 1008, 1009, 4001, 4008, *range(3000, 5000)}


@pytest_asyncio.fixture
async def hostile_daemon(fresh_db: str) -> AsyncIterator[Daemon]:
    async with running_daemon(
        fresh_db, max_send_buffer=BOUND, max_frame_bytes=MAX_FRAME, rate_limit=200.0, rate_burst=50
    ) as d:
        yield d


# -- strategies -------------------------------------------------------------------------------

refs = st.text("abcdef0123456789-", min_size=1, max_size=12)
texts = st.one_of(
    refs.map(lambda r: orjson.dumps({"type": "ping", "ref": r})),
    st.integers(100, MAX_FRAME - 64).map(  # its pong is as large
        lambda n: orjson.dumps({"type": "ping", "data": {"timestamp": "t" * n}})
    ),
    st.sampled_from(
        [
            b'{"type": "notification:sync-request", "data": {}, "ref": "s"}',
            b'{"type": "notification:mark-all-read"}',
            b'{"type": "presence:query", "data": {"userIds": ["x"]}}',
            b'{"type": "auth", "data": {"token": "not-a-token"}}',
            b"\xff",
            b'{"type": "ping", "ref": "\xed\xa0\x80"}',
            b'{"a": "\xc3',  # not UTF-8
            b"not json",
            b"",
        ]
    ),
    st.text(max_size=60).map(str.encode),
    st.integers(MAX_FRAME - 8, MAX_FRAME + 64).map(lambda n: b"x" * n),  # 1009 past the limit
)
controls = st.one_of(
    st.binary(max_size=125),
    st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye", b"\x00\x01", b"\x0b\xb8", b"\x03"]),
)
valid_frames = st.one_of(
    st.builds(frame, st.just(TEXT), texts),
    st.builds(frame, st.just(BINARY), st.binary(max_size=200)),
    st.builds(frame, st.sampled_from([PING, PING, PONG]), controls),
    st.builds(frame, st.just(CLOSE), controls),
)
# a message in fragments (control frames may come between them)
fragmented = st.tuples(texts, st.integers(1, 4), st.lists(valid_frames, max_size=1)).map(
    lambda t: b"".join(
        [
            frame(TEXT, t[0][: len(t[0]) // t[1]], fin=False),
            *(
                frame(CONT, t[0][len(t[0]) * i // t[1] : len(t[0]) * (i + 1) // t[1]], fin=False)
                for i in range(1, t[1])
            ),
            *t[2],
            frame(CONT, b""),
        ]
    )
)
wild_frames = st.builds(
    frame,
    st.sampled_from([TEXT, BINARY, CONT, PING, PONG, CLOSE, 3, 7, 11, 15]),
    texts | controls,
    fin=st.booleans(),
    mask=st.booleans(),
    rsv=st.sampled_from([0, 1, 2, 4]),
)
frames = st.one_of(valid_frames, valid_frames, valid_frames, fragmented, wild_frames)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.lists(frames, min_size=1, max_size=6)),
        st.tuples(st.just("flood"), valid_frames | fragmented, st.integers(10, 5000)),
        st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("pause"), st.sampled_from([0.0, 0.01, 0.05])),
    ),
    max_size=5,
)
plans = st.fixed_dictionaries(
    {
        "auth": st.booleans(),
        "reads": st.sampled_from(["all", "all", "slow", "none"]),
        "ops": ops,
        "end": st.sampled_from(["stay", "close", "fin", "rst"]),
    }
)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Watch:
    """Every server-side connection of the test, looked at every few milliseconds."""

    d: Daemon
    conns: set[Connection] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    most: int = 0
    most_kernel: int = 0
    polite: Client | None = None
    notes: int = 0
    rss_start: int = 0

    def install(self) -> None:
        opened = self.d.app.hub.opened

        def track(conn: Connection) -> None:
            self.conns.add(conn)
            opened(conn)

        self.d.app.hub.opened = track  # type: ignore[method-assign]

    def sample(self) -> None:
        for conn in list(self.conns):
            transport = conn.transport
            if transport is None:
                self.conns.discard(conn)
                continue
            waiting = conn.queued + transport.get_write_buffer_size()
            self.most = max(self.most, waiting)
            if waiting > BOUND + ONE_FRAME:
                self.violations.append(f"{waiting} bytes waiting for {conn.peer()}")
            kernel = kernel_queue(transport)
            self.most_kernel = max(self.most_kernel, kernel)
            if kernel > KERNEL_SHARE:
                self.violations.append(f"{kernel} bytes in the kernel for {conn.peer()}")
            if conn.partial is not None and len(conn.partial) > MAX_FRAME:
                self.violations.append(f"a message of {len(conn.partial)} bytes reassembled")
            unparsed = len(conn.ws.reader.buffer)
            if unparsed > READ_CHUNK + MAX_FRAME + 14:
                self.violations.append(f"{unparsed} bytes unparsed")

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.002)


WATCHES: dict[int, Watch] = {}


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def play(d: Daemon, plan: dict[str, Any]) -> tuple[WireClient, bool]:
    """One hostile client; returns it and whether it kept reading and left the ending to the
    server (a close frame of its own is answered by one, so it counts too)."""
    query = f"?token={d.token('hostile')}" if plan["auth"] else ""
    client = await WireClient.open(
        d.app.port, query, rcvbuf=None if plan["reads"] == "all" else 4096
    )
    reader: asyncio.Task[None] | None = None
    if plan["reads"] != "none":
        slow = plan["reads"] == "slow"
        reader = asyncio.create_task(
            client.read_to_end(30, size=1024 if slow else 65536, pause=0.01 if slow else 0.0)
        )
    try:
        for op in plan["ops"]:
            if client.eof:
                break
            if op[0] == "send":
                client.send(b"".join(op[1]))
            elif op[0] == "flood":
                client.send(op[1] * op[2])
            elif op[0] == "bytes":
                client.send(op[1])
            else:
                await asyncio.sleep(op[1])
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(client.drain(), 0.5)
        end = plan["end"]
        if end == "close":
            client.send(close_frame(1000))
        elif end == "fin" and client.writer.can_write_eof() and not client.writer.is_closing():
            with contextlib.suppress(OSError):
                client.writer.write_eof()
        elif end == "rst":
            client.abort()
        if reader is not None and end != "rst":
            # a close (ours answered, or the server's) ends it; else it stays open
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 0.5)
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await reader
    return client, plan["reads"] != "none" and end in ("stay", "close")


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(group=st.lists(plans, min_size=1, max_size=3))
async def test_hostile_clients_cost_bounded_memory_and_get_their_close_frames(
    hostile_daemon: Daemon, group: list[dict[str, Any]]
) -> None:
    d = hostile_daemon
    watch = WATCHES.get(id(d))
    if watch is None:
        watch = WATCHES[id(d)] = Watch(d, rss_start=rss())
        watch.install()
    if watch.polite is None:
        watch.polite = await d.connect("polite")
    sampler = asyncio.create_task(watch.run())
    clients: list[WireClient] = []
    with logged_errors() as errors:
        try:
            watch.notes += 1
            inserted = asyncio.create_task(d.notify("polite", f"note {watch.notes}"))
            outcomes = await asyncio.gather(*(play(d, plan) for plan in group))
            await inserted
            clients = [client for client, _ in outcomes]
            for (client, reading), plan in zip(outcomes, group, strict=True):
                event(f"close {client.close_code}" if client.close_code else "no close frame")
                if reading and (client.eof or client.reset):
                    # the connection ended while the client kept reading and did not end it:
                    # whatever closed it, a close frame came first
                    assert client.close_code is not None, (plan, client.frames[-3:])
                    assert client.close_code in CLOSE_CODES, client.close_code
            polite = watch.polite
            new = await polite.next_data("notification:new")
            assert new["notification"]["title"] == f"note {watch.notes}"
            pong = await polite.request("ping", {"timestamp": watch.notes}, "pong")
            assert pong["data"] == {"timestamp": watch.notes}
        finally:
            for client in clients:
                client.abort()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    watch.sample()
    assert not watch.violations, watch.violations[:5]
    assert rss() - watch.rss_start < RSS_GROWTH_LIMIT
    assert not errors, [r.getMessage() for r in errors]
