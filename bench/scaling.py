#!/usr/bin/env python3
"""notifyd scaling bench: (1) commits/s and latency of 1/8/32 writers inserting notifications
(triggers + NOTIFY, whose commits PostgreSQL serialises under one lock) beside a trigger-less plain
table, and 10-row INSERTs; (2) CPU per 1,000 notifications of each of N idle `notifyd serve`
processes (and of their PostgreSQL backends), and whether N listeners slow the writers.

    python bench/scaling.py            5 s per measurement (about 90 s)
    python bench/scaling.py --quick    1-2 s per measurement (about 40 s)

PostgreSQL: $NOTIFYD_BENCH_DSN (a database notifyd_bench_<pid> is created on it and dropped
afterwards), else an embedded server. The writers run in this process (asyncpg, uvloop), one
autocommit transaction per INSERT. Tables to stdout, JSON to bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import infra
import report
import uvloop
from infra import Daemon, say
from infra import admin_values as admin

CORES = os.cpu_count() or 1
RESULTS = Path(__file__).parent / "results" / "scaling.json"
APP = "bench-scaling"  # application_name of the writer connections
NOTIFY_SQL = (
    "INSERT INTO notifyd.notifications (user_id, type, title, message) "
    "SELECT $1::text, 'bench', 't', 'm' FROM generate_series(1, {rows})"
)
PLAIN_SQL = (
    "INSERT INTO bench_plain (user_id, stream, seq, type, title, message) "
    "SELECT $1::text, 'user:' || $1::text, $2::bigint + g, 'bench', 't', 'm' "
    "FROM generate_series(0, {rows} - 1) g"
)
# all of notifications' columns, defaults, identity, checks and indexes; LIKE copies no trigger
PLAIN_TABLE = "CREATE TABLE bench_plain (LIKE notifyd.notifications INCLUDING ALL)"
LOCK_WAITS = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
    "AND wait_event_type = 'Lock' AND wait_event = 'object'"
)


class Window:
    """Wall time, this process's CPU (the load generator) and the machine's CPU over a run."""

    def __enter__(self) -> Window:
        self.wall, self.cpu, self.busy = (
            time.monotonic(),
            infra.oncpu_seconds(os.getpid()),
            infra.machine_busy(),
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.monotonic() - self.wall
        self.generator = (infra.oncpu_seconds(os.getpid()) - self.cpu) / self.seconds
        busy, total = infra.machine_busy()
        self.machine = (busy - self.busy[0]) / max(total - self.busy[1], 1)


async def connect(dsn: str, n: int) -> list[asyncpg.Connection]:
    return list(
        await asyncio.gather(
            *(
                asyncpg.connect(dsn, timeout=30, server_settings={"application_name": APP})
                for _ in range(n)
            )
        )
    )


# -- part 1: commits per second under the NOTIFY lock -------------------------------------------


async def closed_loop(
    dsn: str, plain: bool, writers: int, rows: int, seconds: float, tag: str
) -> dict[str, Any]:
    """`writers` connections inserting `rows` rows per statement back to back, each for its own
    user (no contention on the stream counters), for `seconds`."""
    sql = (PLAIN_SQL if plain else NOTIFY_SQL).format(rows=rows)
    conns = await connect(dsn, writers)
    monitor = await asyncpg.connect(dsn, timeout=30)
    latencies: list[float] = []
    lock_waits: list[int] = []
    try:
        stmts = [await c.prepare(sql) for c in conns]

        def args(i: int, k: int) -> tuple[Any, ...]:
            user = f"{tag}-w{i}"
            return (user, k * rows) if plain else (user,)

        for i, stmt in enumerate(stmts):  # warm-up: plans, first counter row
            await stmt.fetch(*args(i, 0))
        end = time.perf_counter() + seconds

        async def write(i: int, stmt: asyncpg.prepared_stmt.PreparedStatement) -> None:
            k = 1
            while (t0 := time.perf_counter()) < end:
                await stmt.fetch(*args(i, k))
                latencies.append(time.perf_counter() - t0)
                k += 1

        async def sample() -> None:
            while time.perf_counter() < end:
                lock_waits.append(await monitor.fetchval(LOCK_WAITS, APP))
                await asyncio.sleep(0.05)

        with Window() as w:
            await asyncio.gather(sample(), *(write(i, s) for i, s in enumerate(stmts)))
    finally:
        await asyncio.gather(monitor.close(), *(c.close() for c in conns))
    tps = len(latencies) / w.seconds
    return {
        "table": "bench_plain" if plain else "notifyd.notifications",
        "writers": writers,
        "rows_per_tx": rows,
        "commits_per_s": round(tps),
        "rows_per_s": round(tps * rows),
        "p50_ms": report.pct_ms(latencies, 50),
        "p99_ms": report.pct_ms(latencies, 99),
        "lock_waiters_avg": round(statistics.fmean(lock_waits), 1) if lock_waits else 0,
        "generator_cores": round(w.generator, 2),
        "machine_busy": round(w.machine, 2),
    }


def commit_lock(dsn: str, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for writers, per_tx in ((1, 1), (8, 1), (32, 1), (32, 10)):
        for plain in (False, True):
            tag = f"{'p' if plain else 'n'}{writers}x{per_tx}"
            uvloop.run(admin(dsn, "CHECKPOINT"))  # no checkpoint of the previous row's writes
            row = uvloop.run(closed_loop(dsn, plain, writers, per_tx, seconds, tag))
            say(f"part 1: {row}")
            rows.append(row)
    return rows


# -- part 2: every daemon receives every NOTIFY -------------------------------------------------


async def paced(dsn: str, rate: float, seconds: float, writers: int) -> dict[str, Any]:
    """rate*seconds single-row INSERTs, the k-th due at start + k/rate, dealt round-robin to
    `writers` connections (one user each); then waits for every listener to drain the queue."""
    n = round(rate * seconds)
    conns = await connect(dsn, writers)
    latencies: list[float] = []
    try:
        stmts = [await c.prepare(NOTIFY_SQL.format(rows=1)) for c in conns]
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05

        async def write(i: int, stmt: asyncpg.prepared_stmt.PreparedStatement) -> None:
            for k in range(i, n, writers):
                delay = start + k / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = time.perf_counter()
                await stmt.fetch(f"paced-w{i}")
                latencies.append(time.perf_counter() - t0)

        with Window() as w:
            await asyncio.gather(*(write(i, s) for i, s in enumerate(stmts)))
        drained = time.monotonic()
        while await conns[0].fetchval("SELECT pg_notification_queue_usage()") > 0:
            if time.monotonic() - drained > 30:
                raise infra.BenchError("the listeners did not drain the NOTIFY queue in 30 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # the last payloads, decoded
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return {
        "notifications": len(latencies),
        "achieved_per_s": round(len(latencies) / w.seconds),
        "p50_ms": report.pct_ms(latencies, 50),
        "p99_ms": report.pct_ms(latencies, 99),
        "machine_busy": round(w.machine, 2),
        "drain_s": round(time.monotonic() - drained, 1),
    }


async def backend_pids(dsn: str) -> list[int]:
    """The daemons' PostgreSQL backends (LISTEN connection and pool), when the server runs on
    this machine (their /proc entries are postgres processes); else none."""
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        pids = [
            r[0]
            for r in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        ]
    finally:
        await conn.close()
    with contextlib.suppress(OSError):
        if all(Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"postgres") for p in pids):
            return pids
    return []


def cpu(pids: list[int]) -> list[float]:
    return [infra.oncpu_seconds(pid) for pid in pids]


def listeners(
    dsn: str, workdir: Path, rate: float, seconds: float, idle: float
) -> list[dict[str, Any]]:
    rows = []
    secret = secrets.token_urlsafe(48)
    for n in (0, 1, 4, 16):
        daemons: list[Daemon] = []
        try:
            for j in range(n):
                (workdir / f"n{n}-{j}").mkdir()
                daemons.append(Daemon(dsn, secret, workdir / f"n{n}-{j}"))
            for d in daemons:
                d.wait_ready(60)
            uvloop.run(admin(dsn, "CHECKPOINT"))  # no checkpoint of earlier writes meanwhile
            time.sleep(1.0)  # settled: catch-up done, pools open
            pids, backends = [d.pid for d in daemons], uvloop.run(backend_pids(dsn))
            rss = [d.rss_kb() for d in daemons]
            before = cpu(pids)
            time.sleep(idle)  # idle CPU, subtracted below
            idle_cpu = [(b - a) / idle for a, b in zip(before, cpu(pids), strict=True)]
            before, pg_before, started = cpu(pids), cpu(backends), time.monotonic()
            row: dict[str, Any] = {"daemons": n}
            row.update(uvloop.run(paced(dsn, rate, seconds, writers=8)))
            elapsed = time.monotonic() - started
            used = [
                b - a - i * elapsed for a, b, i in zip(before, cpu(pids), idle_cpu, strict=True)
            ]
            pg_used = sum(cpu(backends)) - sum(pg_before)
            for d in daemons:
                d.check_alive()
        finally:
            for d in daemons:
                d.proc.terminate()
            for d in daemons:
                d.stop()
        per_1000 = [u / row["notifications"] * 1e6 for u in used]  # ms per 1,000
        row.update(
            {
                "daemon_cpu_ms_per_1000_mean": round(statistics.fmean(per_1000), 1) if n else None,
                "daemon_cpu_ms_per_1000_max": round(max(per_1000), 1) if n else None,
                "daemon_idle_cpu_ms_per_s": round(statistics.fmean(idle_cpu) * 1000, 1)
                if n
                else None,
                "daemons_cpu_s_total": round(sum(used), 2),
                "pg_backend_cpu_ms_per_1000_per_daemon": round(
                    pg_used / row["notifications"] * 1e6 / n, 1
                )
                if n and backends
                else None,
                "idle_rss_kb_first": rss[0] if n else None,
                "idle_rss_kb_mean": round(statistics.fmean(rss)) if n else None,
            }
        )
        say(f"part 2: {row}")
        rows.append(row)
    return rows


# -- orchestration ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "cpus": CORES,
            "git_head": infra.git_head(),
            "postgres_source": infra.postgres_source(),
            "seconds_per_run": args.seconds,
            "rate": args.rate,
            "listen_seconds": args.listen_seconds,
        }
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="notifyd-scaling-"))
        stack.callback(shutil.rmtree, workdir, True)
        dsn = stack.enter_context(infra.bench_database())
        infra.migrate(dsn)

        version, sync_commit = uvloop.run(
            admin(dsn, PLAIN_TABLE, "SHOW server_version", "SHOW synchronous_commit")
        )[1:]
        results["meta"].update(postgres=version, synchronous_commit=sync_commit)
        results["commit_lock"] = commit_lock(dsn, args.seconds)
        uvloop.run(admin(dsn, "DROP TABLE bench_plain", "VACUUM ANALYZE"))  # no autovacuum next
        results["listeners"] = listeners(
            dsn, workdir, args.rate, args.listen_seconds, args.idle_seconds
        )
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    return results


def table(
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    fmt: Callable[[Any], str] = lambda v: (
        v if isinstance(v, str) else "-" if v is None else f"{v:,}"
    ),
) -> str:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row[key]) for _, key in columns) + " |" for row in rows]
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    meta = results["meta"]
    part1 = [dict(r, table=r["table"].removeprefix("notifyd.")) for r in results["commit_lock"]]
    return "\n".join(
        [
            f"notifyd scaling ({meta['mode']}): {meta['cpus']} CPU cores shared by PostgreSQL "
            f"{meta['postgres'].split()[0]} (synchronous_commit={meta['synchronous_commit']}), the "
            f"writers (one Python process) and the daemons; {meta['seconds']:.0f} s",
            "",
            f"1. commits, {meta['seconds_per_run']:g} s per row, one autocommit INSERT per "
            "transaction, one user per writer",
            table(
                part1,
                [
                    ("table", "table"),
                    ("writers", "writers"),
                    ("rows/tx", "rows_per_tx"),
                    ("commits/s", "commits_per_s"),
                    ("rows/s", "rows_per_s"),
                    ("p50 ms", "p50_ms"),
                    ("p99 ms", "p99_ms"),
                    ("waiting on NOTIFY lock (avg)", "lock_waiters_avg"),
                    ("writer process, cores", "generator_cores"),
                    ("machine busy", "machine_busy"),
                ],
            ),
            "",
            f"2. N idle daemons (no clients), {meta['rate']:g} notifications/s for "
            f"{meta['listen_seconds']:g} s from 8 writers; daemon CPU net of its idle CPU",
            table(
                results["listeners"],
                [
                    ("daemons", "daemons"),
                    ("commits/s", "achieved_per_s"),
                    ("p50 ms", "p50_ms"),
                    ("p99 ms", "p99_ms"),
                    ("daemon CPU ms / 1,000 (mean)", "daemon_cpu_ms_per_1000_mean"),
                    ("(max)", "daemon_cpu_ms_per_1000_max"),
                    ("idle daemon CPU ms/s", "daemon_idle_cpu_ms_per_s"),
                    (
                        "PostgreSQL CPU ms / 1,000 per daemon",
                        "pg_backend_cpu_ms_per_1000_per_daemon",
                    ),
                    ("all daemons, CPU s", "daemons_cpu_s_total"),
                    ("idle RSS KB (one daemon)", "idle_rss_kb_first"),
                    ("machine busy", "machine_busy"),
                ],
            ),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s per part-1 row, 2 s part 2")
    parser.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="notifications per second in part 2 (default 1000)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.seconds, args.listen_seconds, args.idle_seconds = (
        (1.0, 2.0, 1.0) if args.quick else (5.0, 5.0, 2.0)
    )
    results = infra.guarded(lambda: run(args))
    if isinstance(results, int):
        return results
    report.write_json(results, args.output)
    print(summary(results))
    print(f"\n(results in {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
