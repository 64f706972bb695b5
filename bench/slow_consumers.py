#!/usr/bin/env python3
"""Slow consumers: does a crowd of clients that stop reading cost memory or other clients'
latency?

    python bench/slow_consumers.py              100 slow clients, 2 x 15 s
    python bench/slow_consumers.py --quick      20 slow clients, 2 x 5 s

Starts PostgreSQL (NOTIFYD_BENCH_DSN or an embedded server) and `notifyd serve`, then runs the
same load twice, side by side: 20 KB announcements to role `slow` at --rate per second, and a
small notification to user `fast` every 10 ms, whose latency (from before its INSERT to its
arrival, measured in a separate client process) is recorded.

  1. baseline: --slow clients of role `slow` (in another process) read everything.
  2. slow: as many raw sockets with role `slow` complete the handshake and never read again
     (receive buffer 4 KB). Each is closed with 4008 once NOTIFYD_MAX_SEND_BUFFER bytes wait
     for it, and reset (RST) once 2 s pass in which it takes none of what is queued.

Prints the fast client's p50/p99/max in both phases, the daemon's RSS (before, peak, after) and
how many slow clients were closed; writes bench/results/slow_consumers.json. Exit status 1 if a
slow client was not closed or the fast client missed a notification.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import infra
import orjson
import uvloop
from report import write_json

from notifyd.client import NotifydClient
from notifyd.core.auth import issue_token

SECRET = "bench-slow-consumers-secret-0123456789"
LARGE = "x" * 20_000
FAST_EVERY = 0.01
RESULTS = Path(__file__).parent / "results" / "slow_consumers.json"


# -- the fast client: a separate process ----------------------------------------------------------


def fast_main(pipe: Any, url: str, token: str) -> None:
    infra.worker_setup()
    uvloop.run(infra.command_loop(pipe, FastClient(url.removesuffix("/ws"), token).handle))


class FastClient:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.latencies: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def handle(self, command: str, args: Any) -> Any:
        if command == "start":
            ready = asyncio.get_running_loop().create_future()
            self.task = asyncio.create_task(self.run(ready))
            await ready
            return None
        if command == "take":  # the latencies so far, and start afresh
            out, self.latencies = self.latencies, []
            return out
        raise ValueError(command)

    async def run(self, ready: asyncio.Future[None]) -> None:
        async for event in NotifydClient(self.url, self.token).events():
            if event.kind == "state" and event.data["state"] == "open" and not ready.done():
                ready.set_result(None)
            elif event.kind == "notification":
                self.latencies.append((time.time() - event.data["data"]["t"]) * 1000)


# -- the role's clients: raw sockets that read and discard (a process), or never read -------


def open_slow(port: int, token: str) -> socket.socket:
    sock = infra.stalled_socket(port)
    sock.sendall(infra.upgrade_request(f"/ws?token={token}"))
    return sock


def readers_main(pipe: Any, port: int, tokens: list[str]) -> None:
    infra.worker_setup()
    tasks: list[asyncio.Task[None]] = []

    async def drain(token: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infra.upgrade_request(f"/ws?token={token}"))
        while await reader.read(1 << 16):
            pass

    async def handle(command: str, args: Any) -> Any:
        if command == "start":
            tasks.extend(asyncio.create_task(drain(t)) for t in tokens)
            await asyncio.sleep(1.0)
            failed = [t.exception() for t in tasks if t.done()]
            if failed:
                raise RuntimeError(f"reading clients failed: {failed[:3]}")
            return None
        raise ValueError(command)

    uvloop.run(infra.command_loop(pipe, handle))


# -- phases ---------------------------------------------------------------------------------------


async def load(dsn: str, seconds: float, rate: float) -> dict[str, int]:
    """Announcements to role `slow` at `rate`/s and a notification to `fast` every 10 ms,
    each on its own schedule (open loop)."""
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    counts = {"fast": 0, "slow": 0}

    async def every(interval: float, statement: str, args: tuple[Any, ...], key: str) -> None:
        start = time.monotonic()
        i = 0
        while (due := start + i * interval) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            data = orjson.dumps({"t": time.time()}).decode()
            await pool.execute(statement, *args, data)
            counts[key] += 1
            i += 1

    try:
        await asyncio.gather(
            every(
                FAST_EVERY, "SELECT notifyd.notify('fast', 'b', 't', 'm', $1::jsonb)", (), "fast"
            ),
            every(
                1 / rate,
                "SELECT notifyd.notify_role('slow', 'b', 't', $1, $2::jsonb)",
                (LARGE,),
                "slow",
            ),
        )
    finally:
        await pool.close()
    return counts


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max": round(ordered[-1], 2),
    }


def run_phase(
    name: str, daemon: infra.Daemon, fast: infra.Worker, dsn: str, seconds: float, rate: float
) -> dict[str, Any]:
    fast.call("take", timeout=10)
    rss: list[int] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            rss.append(daemon.rss_kb())
            await asyncio.sleep(0.25)

    async def go() -> dict[str, int]:
        nonlocal sampling
        sampler = asyncio.create_task(sample())
        try:
            return await load(dsn, seconds, rate)
        finally:
            await asyncio.sleep(CLOSE_SETTLE)
            sampling = False
            await sampler

    before = daemon.rss_kb()
    counts = asyncio.run(go())
    got = fast.call("take", timeout=10)
    daemon.check_alive()
    result = {
        "phase": name,
        "inserted": counts,
        "fast": summary(got),
        "fast_missing": counts["fast"] - len(got),
        "rss_kb": {"before": before, "peak": max(rss), "after": daemon.rss_kb()},
    }
    infra.say(f"{name}: {json.dumps(result)}")
    return result


CLOSE_SETTLE = 3.0  # after the load: the 2 s close grace passes, then RSS is read again


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="20 KB announcements per second to the slow clients' role",
    )
    parser.add_argument(
        "--max-send-buffer",
        type=int,
        default=1 << 20,
        help="NOTIFYD_MAX_SEND_BUFFER (default: its default, 1 MiB)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 clients, 5 s, 60 announcements/s, a 128 KiB send buffer",
    )
    args = parser.parse_args()
    if args.quick:
        args.slow, args.seconds, args.max_send_buffer, args.rate = 20, 5.0, 128 << 10, 60.0
    max_send_buffer = args.max_send_buffer
    infra.raise_fd_limit()
    with infra.bench_database() as dsn, tempfile.TemporaryDirectory() as tmp:
        infra.migrate(dsn)
        daemon = infra.Daemon(
            dsn,
            SECRET,
            Path(tmp),
            NOTIFYD_MAX_SEND_BUFFER=str(max_send_buffer),
            NOTIFYD_MAX_CONNECTIONS_PER_USER="1000",
        )
        fast = infra.Worker(
            "fast client", fast_main, daemon.url, issue_token(SECRET, "fast", [], 3600)
        )
        sockets: list[socket.socket] = []
        readers: infra.Worker | None = None
        try:
            daemon.wait_ready()
            fast.call("start", timeout=30)
            readers = infra.Worker(
                "reading clients",
                readers_main,
                daemon.port,
                [issue_token(SECRET, f"reader{i}", ["slow"], 3600) for i in range(args.slow)],
            )
            readers.call("start", timeout=60)
            log_offset = daemon.log_size()
            baseline = run_phase("baseline", daemon, fast, dsn, args.seconds, args.rate)
            lines, log_offset = daemon.log_since(log_offset)
            baseline["closed_4008"] = sum("closing slow consumer" in line for line in lines)
            readers.stop()
            time.sleep(1.0)
            for i in range(args.slow):
                sockets.append(
                    open_slow(daemon.port, issue_token(SECRET, f"slow{i}", ["slow"], 3600))
                )
            time.sleep(1.0)  # handshakes done
            slow = run_phase("slow", daemon, fast, dsn, args.seconds, args.rate)
            lines, _ = daemon.log_since(log_offset)
            slow["closed_4008"] = sum("closing slow consumer" in line for line in lines)
        finally:
            for sock in sockets:
                sock.close()
            if readers is not None:
                readers.stop()
            fast.stop()
            daemon.stop()
    bound_kb = args.slow * max_send_buffer // 1024
    report = {
        "slow_clients": args.slow,
        "seconds": args.seconds,
        "rate": args.rate,
        "max_send_buffer": max_send_buffer,
        "bound_kb": bound_kb,
        "baseline": baseline,
        "slow": slow,
    }
    write_json(report, RESULTS)
    b, s = baseline, slow
    print(
        f"slow consumers: {args.slow} clients that never read, {args.rate:g} x 20 KB "
        f"announcements/s to them, {args.seconds:g} s per phase"
    )
    print(f"| | {args.slow} clients reading | {args.slow} clients never reading |")
    print("|---|---|---|")
    for key in ("p50", "p99", "max"):
        print(f"| fast client {key}, ms | {b['fast'].get(key)} | {s['fast'].get(key)} |")
    print(f"| fast client missing | {b['fast_missing']} | {s['fast_missing']} |")
    for key in ("before", "peak", "after"):
        print(
            f"| daemon RSS {key}, MB | {b['rss_kb'][key] / 1024:.1f} | "
            f"{s['rss_kb'][key] / 1024:.1f} |"
        )
    print(f"| closed with 4008 | {b['closed_4008']} | {s['closed_4008']} of {args.slow} |")
    print(
        f"bound on buffered bytes: {args.slow} x {max_send_buffer // 1024} KB = "
        f"{bound_kb / 1024:.0f} MB; peak growth over baseline "
        f"{(s['rss_kb']['peak'] - b['rss_kb']['peak']) / 1024:.1f} MB"
    )
    ok = (
        s["closed_4008"] == args.slow
        and not b["closed_4008"]
        and not b["fast_missing"]
        and not s["fast_missing"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
