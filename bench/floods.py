#!/usr/bin/env python3
"""Floods: what the daemon's memory does when clients ask for much and read little.

    python bench/floods.py              15 s per flood
    python bench/floods.py --quick      5 s per flood, under a minute in all

Starts PostgreSQL (NOTIFYD_BENCH_DSN or an embedded server), writes 200 announcements of 100 KB
to role `flood`, then for each flood starts a fresh `notifyd serve` (default settings) and
measures its peak RSS (VmHWM, reset before the flood, and VmRSS sampled every 20 ms) against
its RSS just before:

  a. pings: a client sends 125-byte WebSocket pings as fast as it can and never reads (the
     pongs are the server's to hold); once authenticated, once before any auth frame;
  b. sync: 20 devices of one user of role `flood` each send one sync-request (limit 1000, a
     cursor 0 for every stream) and never read;
  c. polls: 60 concurrent GET /v1/notifications of that user over the same rows, never read;
  d. slow consumer: a client reading 1 MB/s while a 12 MB notification and 20 small ones after
     it are committed to its user; it runs notifyd.client's loop (on a close it reconnects
     with ?sync=1 and syncs from its cursor) until it has all 21 or time is up.

The clients run in a separate process. Prints a table (flood, peak RSS, baseline RSS, growth,
outcome) and writes bench/results/floods.json. Exit status 1 when a flood grew the daemon's
RSS by more than --max-growth-mb (default 150 MB: bounded answers and buffers stay well under
it, the unbounded cases went to hundreds of MB), or the daemon died.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import select
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import asyncpg
import infra
import orjson
import uvloop
from report import write_json
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

from notifyd.client import NotifydClient, Observer, SyncRequest
from notifyd.core.auth import issue_token

SECRET = "bench-floods-secret-0123456789abcdef"
RESULTS = Path(__file__).parent / "results" / "floods.json"
ROLE_ROWS, ROLE_ROW_BYTES = 200, 100_000
DEVICES, POLLS = 20, 60
BIG_ROW_BYTES, AFTER_BIG = 12_000_000, 20
READ_RATE = 1_000_000  # bytes per second, the slow consumer's
SAMPLE_EVERY = 0.02
SETTLE = 0.5  # seconds after the daemon is ready (and after a flood's clients are set up)
CONNECTION_ID = re.compile(r"\b[0-9a-f]{32}\b")


# -- the clients: a separate process ------------------------------------------------------------


def client_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True)


def ping_flood(port: int, token: str | None, seconds: float) -> dict[str, Any]:
    """Pings as fast as the socket takes them, for `seconds`, reading nothing."""
    sock = infra.stalled_socket(port)
    sock.sendall(infra.upgrade_request(f"/ws?token={token}" if token else "/ws"))
    ping = client_frame(Opcode.PING, b"p" * 125)  # the largest a control frame may carry
    burst = ping * 400  # about 52 KB a write
    sock.setblocking(False)
    sent = 0
    closed_after: float | None = None
    start = time.monotonic()
    view = memoryview(burst)
    offset = 0
    while (elapsed := time.monotonic() - start) < seconds:
        _, writable, _ = select.select([], [sock], [], 0.1)
        if not writable:
            continue
        try:
            n = sock.send(view[offset:])
        except (BrokenPipeError, ConnectionResetError):
            closed_after = elapsed
            break
        sent += n
        offset = (offset + n) % len(burst)
    sock.close()
    return {"pings_sent": sent // len(ping), "bytes_sent": sent, "closed_after_s": closed_after}


def ended_by_server(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) a connection nobody read; drains what it holds."""
    sock.setblocking(False)
    try:
        while sock.recv(1 << 20):
            pass
    except BlockingIOError:
        return False  # open, all read
    except OSError:
        return True  # reset
    return True  # end of file


def read_status(sock: socket.socket) -> str:
    """The status of an HTTP answer nobody read until now, or how the connection ended."""
    sock.settimeout(2.0)
    try:
        head = sock.recv(16)
    except (ConnectionResetError, TimeoutError, OSError) as exc:
        return type(exc).__name__
    return head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.1 ") else "closed"


def sync_flood(port: int, token: str, seconds: float) -> dict[str, Any]:
    """DEVICES devices of one user each send one sync-request over every stream, then hold."""
    request = client_frame(
        Opcode.TEXT,
        orjson.dumps(
            {
                "type": "notification:sync-request",
                "ref": "s",
                "data": {"cursors": {"user:victim": 0, "role:flood": 0, "all": 0}, "limit": 1000},
            }
        ),
    )
    socks = []
    for _ in range(DEVICES):
        sock = infra.stalled_socket(port)
        sock.sendall(infra.upgrade_request(f"/ws?token={token}") + request)
        socks.append(sock)
    time.sleep(seconds)
    ended = sum(ended_by_server(sock) for sock in socks)  # after the window: given up on?
    for sock in socks:
        sock.close()
    return {"devices": DEVICES, "ended_by_server": ended}


def poll_flood(port: int, token: str, seconds: float) -> dict[str, Any]:
    """POLLS concurrent polls of one user over the role stream's 200 rows, never read."""
    request = (
        f"GET /v1/notifications?cursor=role:flood:0&limit=1000 HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    socks = []
    for _ in range(POLLS):
        sock = infra.stalled_socket(port)
        sock.sendall(request)
        socks.append(sock)
    time.sleep(seconds)
    statuses: dict[str, int] = {}
    for sock in socks:
        status = read_status(sock)
        statuses[status] = statuses.get(status, 0) + 1
        sock.close()
    return {"polls": POLLS, "statuses": statuses}


class SlowReader(Observer):
    """notifyd.client's loop (?sync=1, a sync-request from its cursor on every connect, paging
    on hasMore, a reconnect after a close) over a connection that reads at READ_RATE: after each
    read its socket is paused for as long as those bytes take at that rate."""

    def __init__(self, port: int, token: str, user: str, want: int) -> None:
        self.want = want  # seqs 1..want of its user stream
        self.got: dict[int, int] = {}  # seq -> bytes of its JSON
        self.closes: list[int] = []
        self.read_bytes = 0
        self.synced = asyncio.Event()  # the first sync-response came: live items flow
        reader = self

        class Throttled(ClientConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 << 10)

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                reader.read_bytes += len(data)
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(len(data) / READ_RATE, self._resume)

            def _resume(self) -> None:
                if not self.transport.is_closing():
                    self.transport.resume_reading()

        self.client = NotifydClient(
            f"ws://127.0.0.1:{port}",
            token,
            {f"user:{user}": 0},
            0.25,  # "reconnect at once (after a short random delay)"
            0.25,
            quick=0.25,
            observer=self,
            connect_options={"create_connection": Throttled, "max_queue": None, "proxy": None},
        )

    def done(self) -> bool:
        return len(self.got) >= self.want

    def sync_received(self, request: SyncRequest | None, data: dict[str, Any]) -> None:
        self.synced.set()

    def closed(self, code: int | None) -> None:
        if not self.done():
            self.closes.append(code if code is not None else 1006)

    async def run(self, deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline - time.monotonic()):
                async for event in self.client.events():
                    if event.kind == "notification":
                        self.got[event.data["seq"]] = len(orjson.dumps(event.data))
                        if self.done():
                            break


class Clients:
    def __init__(self) -> None:
        self.slow: SlowReader | None = None
        self.slow_task: asyncio.Task[None] | None = None

    async def handle(self, command: str, args: Any) -> Any:
        if command == "ping":
            return ping_flood(*args)
        if command == "sync":
            return sync_flood(*args)
        if command == "polls":
            return poll_flood(*args)
        if command == "slow_start":
            port, token, user, want, seconds = args
            self.slow = SlowReader(port, token, user, want)
            self.slow_task = asyncio.create_task(self.slow.run(time.monotonic() + seconds))
            await asyncio.wait_for(self.slow.synced.wait(), 10)
            return None
        if command == "slow_result":
            assert self.slow is not None and self.slow_task is not None
            await self.slow_task
            s = self.slow
            big = [seq for seq, size in s.got.items() if size > BIG_ROW_BYTES]
            return {
                "received": len(s.got),
                "wanted": s.want,
                "big_row_received": bool(big),
                "missing": sorted(set(range(1, s.want + 1)) - set(s.got))[:10],
                "connections": s.client.connections,
                "closes": s.closes,
                "read_mb": round(s.read_bytes / 1e6, 1),
            }
        raise ValueError(command)


def clients_main(pipe: Pipe) -> None:
    infra.worker_setup()
    uvloop.run(infra.command_loop(pipe, Clients().handle))


# -- measuring ------------------------------------------------------------------------------------


class PeakRss:
    """The daemon's peak RSS over a window: VmHWM reset at the start (clear_refs 5, where the
    kernel allows it) and VmRSS sampled meanwhile, whichever is higher."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self.hwm_reset = False

    def __enter__(self) -> PeakRss:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            pass
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = infra.status_kb(self.pid, "VmRSS")
            if rss is not None:
                self.samples.append(rss)
            self._stop.wait(SAMPLE_EVERY)

    def peak_kb(self) -> int:
        peak = max(self.samples, default=0)
        hwm = infra.status_kb(self.pid, "VmHWM") if self.hwm_reset else None
        if hwm is not None:
            peak = max(peak, hwm)
        return peak


@dataclass
class Flood:
    key: str
    title: str
    run: Callable[[infra.Daemon, infra.Worker], dict[str, Any]]
    outcome: Callable[[dict[str, Any]], str]


def token(user: str, roles: list[str] | None = None) -> str:
    return issue_token(SECRET, user, roles or [], 3600)


def floods(seconds: float, slow_seconds: float, dsn: str) -> list[Flood]:
    def ping(auth: bool) -> Callable[[infra.Daemon, infra.Worker], dict[str, Any]]:
        def run(daemon: infra.Daemon, clients: infra.Worker) -> dict[str, Any]:
            out: dict[str, Any] = clients.call(
                "ping",
                daemon.port,
                token("pinger") if auth else None,
                seconds,
                timeout=seconds + 30,
            )
            return out

        return run

    def ping_outcome(r: dict[str, Any]) -> str:
        ended = (
            f"closed by the server after {r['closed_after_s']:.1f} s"
            if r["closed_after_s"] is not None
            else f"still open after {seconds:g} s"
        )
        return f"{r['pings_sent']:,} pings sent; {ended}"

    def sync(daemon: infra.Daemon, clients: infra.Worker) -> dict[str, Any]:
        out: dict[str, Any] = clients.call(
            "sync", daemon.port, token("victim", ["flood"]), seconds, timeout=seconds + 60
        )
        return out

    def polls(daemon: infra.Daemon, clients: infra.Worker) -> dict[str, Any]:
        out: dict[str, Any] = clients.call(
            "polls", daemon.port, token("victim", ["flood"]), seconds, timeout=seconds + 60
        )
        return out

    def slow(daemon: infra.Daemon, clients: infra.Worker) -> dict[str, Any]:
        want = 1 + AFTER_BIG
        clients.call(
            "slow_start", daemon.port, token("slowpoke"), "slowpoke", want, slow_seconds, timeout=30
        )
        asyncio.run(write_big(dsn))
        out: dict[str, Any] = clients.call("slow_result", timeout=slow_seconds + 30)
        return out

    def slow_outcome(r: dict[str, Any]) -> str:
        got = (
            f"got all {r['wanted']}"
            if r["received"] == r["wanted"]
            else f"got {r['received']} of {r['wanted']}, the 12 MB row "
            f"{'among them' if r['big_row_received'] else 'not'}"
        )
        codes = sorted(set(r["closes"]))
        closes = (
            "; ended " + ", ".join(f"{r['closes'].count(c)} x {c}" for c in codes) if codes else ""
        )
        return f"{got} in {r['connections']} connection(s){closes}"

    return [
        Flood("ping_auth", "a. pings, authenticated, never read", ping(True), ping_outcome),
        Flood("ping_unauth", "a. pings, unauthenticated, never read", ping(False), ping_outcome),
        Flood(
            "sync",
            f"b. {DEVICES} devices' sync-requests over {ROLE_ROWS} x 100 KB, never read",
            sync,
            lambda r: f"{r['ended_by_server']} of {r['devices']} ended by the server",
        ),
        Flood(
            "polls",
            f"c. {POLLS} polls over the same rows, never read",
            polls,
            lambda r: ", ".join(f"{n} x {status}" for status, n in sorted(r["statuses"].items())),
        ),
        Flood("slow_consumer", "d. 1 MB/s reader, a 12 MB row and 20 after it", slow, slow_outcome),
    ]


async def fill(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SELECT notifyd.notify_role('flood', 'bench', 'n' || k, repeat('x', $1)) "
            "FROM generate_series(1, $2) k",
            ROLE_ROW_BYTES,
            ROLE_ROWS,
        )
    finally:
        await conn.close()


async def write_big(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SELECT notifyd.notify('slowpoke', 'bench', 'big', repeat('x', $1))", BIG_ROW_BYTES
        )
        for i in range(AFTER_BIG):
            await conn.execute(
                "SELECT notifyd.notify('slowpoke', 'bench', $1, 'after')", f"after {i}"
            )
    finally:
        await conn.close()


def warnings(lines: list[str]) -> dict[str, int]:
    """The daemon's log lines of a flood (WARNING and above), counted by message."""
    counts: dict[str, int] = {}
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = line
        message = str(record.get("msg", line) if isinstance(record, dict) else line)
        message = CONNECTION_ID.sub("<id>", message)  # one count per kind of message
        counts[message] = counts.get(message, 0) + 1
    return counts


def measure(flood: Flood, dsn: str, workdir: Path, clients: infra.Worker) -> dict[str, Any]:
    daemon = infra.Daemon(dsn, SECRET, workdir, shared_log=workdir / "notifyd.log")
    try:
        daemon.wait_ready()
        time.sleep(SETTLE)
        baseline = daemon.rss_kb()
        offset = daemon.log_size()
        started = time.monotonic()
        with PeakRss(daemon.pid) as peak:
            result = flood.run(daemon, clients)
            time.sleep(SETTLE)
        daemon.check_alive()
        after = daemon.rss_kb()
        lines, _ = daemon.log_since(offset)
    finally:
        daemon.stop()
    peak_kb = peak.peak_kb()
    row: dict[str, Any] = {
        "flood": flood.key,
        "title": flood.title,
        "baseline_kb": baseline,
        "peak_kb": peak_kb,
        "growth_kb": peak_kb - baseline,
        "after_kb": after,
        "hwm_reset": peak.hwm_reset,
        "seconds": round(time.monotonic() - started, 1),
        "result": result,
        "outcome": flood.outcome(result),
        "daemon_warnings": warnings(lines),
    }
    infra.say(
        f"{flood.key}: peak {peak_kb / 1024:.1f} MB, baseline {baseline / 1024:.1f} MB; "
        f"{row['outcome']}; the daemon logged {row['daemon_warnings'] or 'nothing'}"
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of floods a-c")
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=60.0,
        help="time the slow consumer (d) has to get everything",
    )
    parser.add_argument(
        "--max-growth-mb",
        type=float,
        default=150.0,
        help="RSS growth over the baseline that counts as unbounded",
    )
    parser.add_argument("--only", default="", help="comma-separated flood keys to run")
    parser.add_argument("--quick", action="store_true", help="5 s floods, 20 s for (d)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.slow_seconds = 5.0, 20.0
    result = infra.guarded(lambda: run(args))
    if isinstance(result, int):
        return result
    rows = result["floods"]
    print(
        f"floods: {args.seconds:g} s each, the slow consumer up to {args.slow_seconds:g} s; "
        f"unbounded above +{args.max_growth_mb:g} MB"
    )
    print("| flood | peak RSS | baseline RSS | growth | outcome |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['title']} | {r['peak_kb'] / 1024:.1f} MB | {r['baseline_kb'] / 1024:.1f} MB "
            f"| {r['growth_kb'] / 1024:+.1f} MB | {r['outcome']} |"
        )
    over = [r["flood"] for r in rows if r["growth_kb"] > args.max_growth_mb * 1024]
    if over:
        print(
            f"UNBOUNDED: {', '.join(over)} grew the daemon by more than {args.max_growth_mb:g} MB"
        )
        return 1
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    infra.raise_fd_limit()
    with infra.bench_database() as dsn, tempfile.TemporaryDirectory() as tmp:
        infra.migrate(dsn)
        asyncio.run(fill(dsn))
        chosen = [
            f
            for f in floods(args.seconds, args.slow_seconds, dsn)
            if not args.only or f.key in args.only.split(",")
        ]
        clients = infra.Worker("flood clients", clients_main)
        try:
            rows = [measure(flood, dsn, Path(tmp), clients) for flood in chosen]
        finally:
            clients.stop()
    report = {
        "commit": infra.git_head(),
        "seconds": args.seconds,
        "slow_seconds": args.slow_seconds,
        "max_growth_mb": args.max_growth_mb,
        "floods": rows,
    }
    write_json(report, RESULTS)
    return report


if __name__ == "__main__":
    sys.exit(main())
