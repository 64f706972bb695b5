"""What no server can go below on this machine, measured in the same run as the servers:
(1) one send() per connection to N loopback TCP connections from a bare Python loop, the
kernel's share of a fan-out (on loopback the sender also pays the receiver's TCP processing);
(2) commit -> a bare asyncpg LISTEN client, PostgreSQL's share of commit -> client latency,
at each latency scenario's rate and batch."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

import asyncpg
import infra
import orjson
import report
import uvloop
from asyncpg.pool import PoolConnectionProxy
from infra import BenchError, Worker, say

SINK_PROCESSES = 2  # like the WebSocket clients: two processes at nice 10
SINK_NICE = 10
FRAME_BYTES = 330  # about a broadcast notification:new frame, WebSocket header included
ROUNDS = 5
ROUND_GAP = 1.0
CHANNEL = "notifyd"


# -- (1) the send() floor -------------------------------------------------------------------


class _Sink(asyncio.Protocol):
    def __init__(self, pool: _Sinks) -> None:
        self.pool = pool

    def data_received(self, data: bytes) -> None:
        self.pool.got(len(data))


class _Sinks:
    """Receiving ends: connections that read and count what arrives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.transports: list[asyncio.BaseTransport] = []
        self.received = 0
        self.last = 0.0
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None

    def got(self, n: int) -> None:
        self.received += n
        self.last = time.time()
        if self.waiter is not None and self.received >= self.want and not self.waiter.done():
            self.waiter.set_result(None)

    async def handle(self, command: str, args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        if command == "connect":
            gate = asyncio.Semaphore(100)

            async def one() -> None:
                async with gate:
                    transport, _ = await loop.create_connection(
                        lambda: _Sink(self), "127.0.0.1", self.port
                    )
                    self.transports.append(transport)

            await asyncio.gather(*(one() for _ in range(args[0])))
            return len(self.transports)
        if command == "wait":  # until `total` bytes in all, bounded
            self.want = args[0]
            if self.received < self.want:
                self.waiter = loop.create_future()
                try:
                    async with asyncio.timeout(args[1]):
                        await self.waiter
                except TimeoutError:
                    pass
            return {"received": self.received, "last": self.last}
        if command == "close":
            for transport in self.transports:
                transport.close()
            return len(self.transports)
        raise ValueError(f"unknown command {command!r}")


def sink_main(pipe: Pipe, port: int) -> None:
    infra.worker_setup()
    os.nice(SINK_NICE)
    uvloop.run(infra.command_loop(pipe, _Sinks(port).handle))


def send_floor(n: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """One FRAME_BYTES send() to each of n loopback connections per round, from this process:
    the loop's CPU time (thread_time) and wall time per connection, median of the rounds."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = listener.getsockname()[1]
    sinks = [Worker(f"sink-{i}", sink_main, port) for i in range(SINK_PROCESSES)]
    socks: list[socket.socket] = []
    try:
        for i, sink in enumerate(sinks):
            sink.send("connect", n // SINK_PROCESSES + (i < n % SINK_PROCESSES))
        listener.settimeout(60)
        while len(socks) < n:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the servers do
            sock.setblocking(False)
            socks.append(sock)
        for sink in sinks:
            sink.receive(60)
        frame = b"\x81\x7e" + (FRAME_BYTES - 4).to_bytes(2, "big") + b"x" * (FRAME_BYTES - 4)
        cpu_us: list[float] = []
        wall_us: list[float] = []
        for r in range(1, rounds + 1):
            time.sleep(ROUND_GAP)
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            for sock in socks:
                sock.send(frame)
            cpu_us.append((time.thread_time() - cpu0) * 1e6 / n)
            wall_us.append((time.perf_counter() - wall0) * 1e6 / n)
            expected = r * FRAME_BYTES * len(socks)
            for sink, share in zip(sinks, _shares(n), strict=True):
                sink.send("wait", expected * share // n, 30.0)
            got = sum(s.receive(40)["received"] for s in sinks)
            if got < expected:
                raise BenchError(f"send floor: {got} of {expected} bytes arrived")
        for sink in sinks:
            sink.call("close", timeout=30)
        return {
            "connections": n,
            "frame_bytes": FRAME_BYTES,
            "rounds": rounds,
            "cpu_us_per_conn": statistics.median(cpu_us),
            "wall_us_per_conn": statistics.median(wall_us),
            "cpu_us_runs": cpu_us,
            "wall_us_runs": wall_us,
        }
    finally:
        for sock in socks:
            sock.close()
        listener.close()
        for sink in sinks:
            sink.stop()


def _shares(n: int) -> list[int]:
    return [n // SINK_PROCESSES + (i < n % SINK_PROCESSES) for i in range(SINK_PROCESSES)]


# -- (2) the NOTIFY floor ----------------------------------------------------------------------


class _Listener:
    """A bare LISTEN client. With `readback`, it also reads every notification back by id (one
    query at a time; the ids heard meanwhile go in the next): what delivering by reference,
    rather than trusting the payload's content, would cost."""

    def __init__(self, dsn: str, readback: bool = False) -> None:
        self.dsn = dsn
        self.readback = readback
        self.conn: asyncpg.Connection | None = None
        self.reader: asyncpg.Connection | None = None
        self.ids: list[int] = []
        self.times: list[float] = []
        self.pending: list[int] = []
        self.reading = False

    def notified(
        self,
        _conn: asyncpg.Connection | PoolConnectionProxy,
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        now = time.time()
        # the events of a signed payload (after 64 hex digits of signature), not verified
        ids = [
            event["n"]["id"]
            for event in orjson.loads(str(payload)[64:])["e"]
            if event.get("k") == "n" and event.get("n")
        ]
        if not self.readback:
            self.ids += ids
            self.times += [now] * len(ids)
            return
        self.pending += ids
        if not self.reading:
            self.reading = True
            asyncio.get_running_loop().create_task(self._read_back())

    async def _read_back(self) -> None:
        assert self.reader is not None
        try:
            while self.pending:
                ids, self.pending = self.pending, []
                rows = await self.reader.fetch(
                    "SELECT n.id, notifyd.to_wire(n)::text AS wire, s.unread "
                    "FROM notifyd.notifications n JOIN notifyd.streams s USING (stream) "
                    "WHERE n.id = ANY($1::bigint[])",
                    ids,
                )
                now = time.time()
                self.ids += [r["id"] for r in rows]
                self.times += [now] * len(rows)
        finally:
            self.reading = False

    async def handle(self, command: str, args: Sequence[Any]) -> Any:
        if command == "listen":
            self.conn = await asyncpg.connect(self.dsn)
            if self.readback:
                self.reader = await asyncpg.connect(self.dsn)
            await self.conn.add_listener(CHANNEL, self.notified)
            return True
        if command == "take":  # after a short wait for stragglers
            await asyncio.sleep(args[0])
            ids, times = self.ids, self.times
            self.ids, self.times = [], []
            return {"ids": ids, "times": times}
        raise ValueError(f"unknown command {command!r}")


def listener_main(pipe: Pipe, dsn: str, readback: bool = False) -> None:
    infra.worker_setup()
    uvloop.run(infra.command_loop(pipe, _Listener(dsn, readback).handle))


def notify_floor(
    dsn: str,
    writer: Worker,
    rate: float,
    seconds: float,
    users: list[str],
    batch: int = 1,
    windows: int = 1,
    readback: bool = False,
) -> dict[str, Any]:
    """The writer's load of a latency scenario (`batch` notifications per INSERT, `windows`
    back-to-back windows) with no server: commit -> a bare asyncpg LISTEN client at nice 0
    (where a server would be). Like the servers' figure, the window with the median p99; every
    window's percentiles beside it, in order."""
    listener = Worker("listener", listener_main, dsn, readback)
    runs: list[dict[str, Any]] = []
    try:
        listener.call("listen", timeout=30)
        for window in range(windows):
            sent = writer.call(
                "rate_run",
                users,
                rate,
                seconds,
                os.getpid() + 1 + window,
                batch,
                timeout=seconds + 90,
            )
            got = listener.call("take", 1.0, timeout=30)
            commit = dict(zip(sent["ids"], sent["t1"], strict=True))
            delays = [
                at - commit[nid]
                for nid, at in zip(got["ids"], got["times"], strict=True)
                if nid in commit
            ]
            runs.append(
                {
                    "sent": len(commit),
                    "heard": len(delays),
                    "commit_to_listener_ms": report.distribution_ms(delays),
                }
            )
    finally:
        listener.stop()
    chosen = report.median_window([run["commit_to_listener_ms"]["p99"] for run in runs])
    out = {
        "rate": rate,
        "batch": batch,
        "seconds": seconds,
        **runs[chosen],
        "window": chosen,
        "sent": sum(run["sent"] for run in runs),
        "heard": sum(run["heard"] for run in runs),
        "windows": [
            {k: run["commit_to_listener_ms"][k] for k in ("p50", "p99", "p999", "max")}
            for run in runs
        ],
    }
    say(
        f"NOTIFY floor at {rate:,.0f}/s: {out['heard']:,} of {out['sent']:,} notifications "
        f"heard; p99 by window {[round(w['p99'], 2) for w in out['windows']]} ms"
    )
    return out
