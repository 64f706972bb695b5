#!/usr/bin/env python3
"""notifyd retention bench: how long notifyd.prune() batches take and what they cost the apps'
writers. Old rows (40 days) over 2,000 user streams are pruned exactly as the daemon does it
(batches of notifyd.storage.retention.PRUNE_BATCH rows, one transaction each under the retention
advisory lock, with PRUNE_PAUSE between them) while paced writers insert notifications into the same
streams; then once more with batches of 10,000 and no pause, to show why the batches are small.
Checks that every old row went, that each stream's pruned_below moved past its old rows, that no
kept row went, and that no writer insert failed; and shows the plan of one (rolled back) batch under
auto_explain: how the DELETE finds its rows.

    python bench/retention.py            200,000 old rows, 5 s baseline (about 90 s)
    python bench/retention.py --quick    20,000 old rows, 2 s baseline (about 20 s)

PostgreSQL: $NOTIFYD_BENCH_DSN (a database notifyd_bench_<pid> is created on it and dropped
afterwards), else an embedded server. The writers and the pruner run in this process (asyncpg,
uvloop): 4 connections, one autocommit notifyd.notify() per transaction, paced to 500/s in
all, into random streams among the seeded ones. Tables to stdout, JSON to
bench/results/retention.json. Exit status 1 when a writer insert failed or a check did not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import infra
import report
import uvloop
from infra import admin_values as admin
from infra import say

from notifyd.storage.retention import PRUNE_BATCH, PRUNE_PAUSE
from notifyd.storage.store import PRUNE_LOCK

CORES = os.cpu_count() or 1
RESULTS = Path(__file__).parent / "results" / "retention.json"
WRITER_APP = "bench-retention-writer"  # application_name of the writer connections
PRUNER_APP = "bench-retention-pruner"
USERS = 2000  # streams user:0 .. user:1999
WRITERS = 4
RATE = 500.0  # writer inserts per second, all writers together
RETENTION_DAYS = 30.0
OLD_AGE = "40 days"
SEED_CHUNK = 20_000  # rows per seeding INSERT (one statement, one transaction)
DAEMON_BATCH, DAEMON_PAUSE = PRUNE_BATCH, PRUNE_PAUSE  # what the daemon uses
BIG_BATCH = 10_000
MAX_LOCK_TIMEOUTS = 50  # consecutive lock_not_available batches before the bench gives up

# Store.prune, statement for statement
TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
PRUNE = "SELECT notifyd.prune(make_interval(secs => $1), $2)"
NOTIFY = "SELECT notifyd.notify($1, 'bench', 't', 'm')"
# rows lo..hi: user (g mod 2000), every other one read, created `age` ago minus 10 ms per row
# still to come (the oldest first, so created_at order is seq order in each stream)
SEED = (
    "INSERT INTO notifyd.notifications (user_id, type, title, message, read_at, created_at) "
    "SELECT (g % {users})::text, 'bench', 't', 'm', "
    "CASE WHEN g % 2 = 0 THEN now() - interval '{age}' + interval '1 hour' END, "
    "now() - interval '{age}' - ({hi} - g) * interval '10 ms' "
    "FROM generate_series({lo}, {hi}) g"
)
OLD_MAX_SEQ = (
    "SELECT stream, max(seq) FROM notifyd.notifications "
    "WHERE created_at < now() - make_interval(secs => $1) GROUP BY stream"
)
OLD_COUNT = (
    "SELECT count(*) FROM notifyd.notifications "
    "WHERE created_at < now() - make_interval(secs => $1)"
)
KEPT_COUNT = (
    "SELECT count(*) FROM notifyd.notifications "
    "WHERE created_at >= now() - make_interval(secs => $1)"
)
UNREAD_WRONG = (
    "SELECT count(*) FROM notifyd.streams s WHERE s.unread <> "
    "(SELECT count(*) FROM notifyd.notifications n WHERE n.stream = s.stream "
    "AND n.read_at IS NULL AND n.user_id IS NOT NULL)"
)
SEQ_SCAN = re.compile(
    r"Seq Scan on notifications n .*?actual time=[\d.]+\.\.([\d.]+) "
    r"rows=(\d+)"
)
LOCK_WAITS = (
    "SELECT application_name, wait_event FROM pg_stat_activity "
    "WHERE application_name = ANY($1) AND wait_event_type IN ('Lock', 'LWLock')"
)


# -- seeding --------------------------------------------------------------------------------------


async def seed(dsn: str, old: int, recent: int) -> dict[str, Any]:
    """`old` rows 40 days old (and `recent` rows from the last hour) over the USERS streams,
    with the triggers (seq, unread, NOTIFY) as an app's inserts; then VACUUM ANALYZE and a
    CHECKPOINT. Returns the time it took and each stream's highest old seq."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        for age, count in ((OLD_AGE, old), ("1 hour", recent)):
            for lo in range(0, count, SEED_CHUNK):
                hi = min(lo + SEED_CHUNK, count) - 1
                await conn.execute(SEED.format(users=USERS, age=age, lo=lo, hi=hi), timeout=300)
        inserted = time.monotonic() - started
        await conn.execute("VACUUM ANALYZE notifyd.notifications", timeout=300)
        await conn.execute("VACUUM ANALYZE notifyd.streams", timeout=300)
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT", timeout=300)  # none of the seed's writes later
        old_max = {r[0]: r[1] for r in await conn.fetch(OLD_MAX_SEQ, RETENTION_DAYS * 86400.0)}
    finally:
        await conn.close()
    return {
        "old_rows": old,
        "recent_rows": recent,
        "insert_s": round(inserted, 1),
        "total_s": round(time.monotonic() - started, 1),
        "old_max_seq": old_max,
    }


# -- the phases -----------------------------------------------------------------------------------


class Writers:
    """WRITERS connections inserting one notification per autocommit transaction, the k-th due
    at start + k/RATE (dealt round-robin), each into a random stream among the seeded ones."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conns: list[asyncpg.Connection] = []
        self.rng = random.Random(20240501)
        self.inserted = 0  # successful inserts of the whole run (warm-up included)
        self.failures: list[str] = []  # every failed insert: a defect

    async def open(self) -> None:
        self.conns = list(
            await asyncio.gather(
                *(
                    asyncpg.connect(
                        self.dsn,
                        timeout=30,
                        command_timeout=60,
                        server_settings={"application_name": WRITER_APP},
                    )
                    for _ in range(WRITERS)
                )
            )
        )
        for conn in self.conns:  # warm-up: the plans
            await self.insert(conn)

    async def close(self) -> None:
        await asyncio.gather(*(c.close(timeout=5) for c in self.conns), return_exceptions=True)

    async def insert(self, conn: asyncpg.Connection) -> bool:
        try:
            await conn.fetchval(NOTIFY, str(self.rng.randrange(USERS)))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return False
        self.inserted += 1
        return True

    async def run(self, stop: asyncio.Event) -> tuple[list[float], list[float]]:
        """Until `stop` is set: each insert's commit latency (from the moment it was sent) and
        its latency from the moment it was due (what an app whose inserts queue for these
        connections sees: a blocked writer sends its next inserts late)."""
        start = time.perf_counter() + 0.02  # (uvloop's loop.time() has 1 ms steps)
        latencies: list[float] = []
        from_due: list[float] = []

        async def write(i: int, conn: asyncpg.Connection) -> None:
            k = i
            while not stop.is_set():
                due = start + k / RATE
                if due > time.perf_counter():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), due - time.perf_counter())
                    if stop.is_set():
                        return
                t0 = time.perf_counter()
                if await self.insert(conn):
                    t1 = time.perf_counter()
                    latencies.append(t1 - t0)
                    from_due.append(t1 - due)
                k += WRITERS

        await asyncio.gather(*(write(i, c) for i, c in enumerate(self.conns)))
        return latencies, from_due


async def sample_waits(dsn: str, stop: asyncio.Event) -> dict[str, Any]:
    """Every 20 ms, which writers and the pruner wait on a lock (heavyweight: a row or a
    transaction; LWLock: e.g. the NOTIFY queue at commit)."""
    conn = await asyncpg.connect(dsn, timeout=30)
    samples, writer_samples, most = 0, 0, 0
    events: Counter[str] = Counter()
    try:
        while not stop.is_set():
            rows = await conn.fetch(LOCK_WAITS, [WRITER_APP, PRUNER_APP])
            samples += 1
            waiting = sum(1 for r in rows if r[0] == WRITER_APP)
            writer_samples += waiting > 0
            most = max(most, waiting)
            events.update(f"{'writer' if r[0] == WRITER_APP else 'pruner'}:{r[1]}" for r in rows)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)
    finally:
        await conn.close()
    return {
        "samples": samples,
        "writers_waiting_share": round(writer_samples / max(samples, 1), 3),
        "writers_waiting_max": most,
        "wait_events": dict(events.most_common()),
    }


class Pruner:
    """The daemon's retention loop (App.prune over Store.prune) on its own connection, but a
    batch that hits lock_not_available is counted and retried after the pause (the daemon
    would stop there and try again at its next run, about 10 minutes later)."""

    def __init__(self, conn: asyncpg.Connection, batch: int, pause: float) -> None:
        self.conn, self.batch, self.pause = conn, batch, pause
        self.durations: list[float] = []  # every batch's transaction, begin to commit
        self.counts: list[int] = []
        self.lock_timeouts = 0
        self.busy = 0.0  # seconds in batches (no pauses)
        self.wall = 0.0  # seconds from the first batch to the end of the last one

    async def one(self) -> int | None:
        async with self.conn.transaction():
            if not await self.conn.fetchval(TRY_LOCK, PRUNE_LOCK):
                raise infra.BenchError("another process holds notifyd's retention lock")
            try:
                deleted: int = await self.conn.fetchval(PRUNE, RETENTION_DAYS * 86400.0, self.batch)
            except asyncpg.LockNotAvailableError:
                return None  # the transaction is rolled back
        return deleted

    async def run(self) -> None:
        started, streak = time.perf_counter(), 0
        while True:
            t0 = time.perf_counter()
            deleted = await self.one()
            self.durations.append(time.perf_counter() - t0)
            if deleted is None:
                self.lock_timeouts += 1
                streak += 1
                if streak >= MAX_LOCK_TIMEOUTS:
                    raise infra.BenchError(f"{streak} prune batches in a row hit lock_timeout")
            else:
                streak = 0
                self.counts.append(deleted)
                if deleted < self.batch:
                    break
            if self.pause:
                await asyncio.sleep(self.pause)
        self.wall = time.perf_counter() - started
        self.busy = sum(self.durations)


async def phase(
    dsn: str,
    writers: Writers,
    name: str,
    short: str,
    batch: int | None,
    pause: float,
    seconds: float,
) -> dict[str, Any]:
    """Writers alone for `seconds` (batch None), or writers while a pruner runs to the end."""
    pruner_conn = await asyncpg.connect(
        dsn, timeout=30, command_timeout=120, server_settings={"application_name": PRUNER_APP}
    )
    stop = asyncio.Event()
    busy0, wall0 = infra.machine_busy(), time.monotonic()
    try:
        sampler = asyncio.ensure_future(sample_waits(dsn, stop))
        writing = asyncio.ensure_future(writers.run(stop))
        pruner = Pruner(pruner_conn, batch or 0, pause)
        try:
            if batch is None:
                await asyncio.sleep(seconds)
            else:
                await pruner.run()
        finally:
            stop.set()
            latencies, from_due = await writing
            waits = await sampler
    finally:
        await pruner_conn.close(timeout=5)
    busy1 = infra.machine_busy()
    elapsed = time.monotonic() - wall0
    pruned = sum(pruner.counts)
    row: dict[str, Any] = {
        "phase": name,
        "short": short,
        "batch": batch,
        "pause_ms": round(pause * 1000) if batch else None,
        "seconds": round(elapsed, 1),
        "rows_pruned": pruned if batch else None,
        "batches": len(pruner.durations) if batch else None,
        "pruned_per_s_busy": round(pruned / pruner.busy) if pruner.busy else None,
        "pruned_per_s_wall": round(pruned / pruner.wall) if pruner.wall else None,
        "batch_p50_ms": report.pct_ms(pruner.durations, 50, 1) if batch else None,
        "batch_p99_ms": report.pct_ms(pruner.durations, 99, 1) if batch else None,
        "batch_max_ms": report.pct_ms(pruner.durations, 100, 1) if batch else None,
        "lock_timeouts": pruner.lock_timeouts if batch else None,
        "writer_commits": len(latencies),
        "writer_per_s": round(len(latencies) / elapsed),
        "writer_p50_ms": report.pct_ms(latencies, 50, 1),
        "writer_p99_ms": report.pct_ms(latencies, 99, 1),
        "writer_max_ms": report.pct_ms(latencies, 100, 1),
        "writer_over_100ms": sum(1 for x in latencies if x > 0.1),
        "writer_from_due_p99_ms": report.pct_ms(from_due, 99, 1),
        "writer_from_due_max_ms": report.pct_ms(from_due, 100, 1),
        "machine_busy": round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 2),
        "waits": waits,
        "batch_ms": [round(d * 1000, 1) for d in pruner.durations],
    }
    return row


async def prune_plan(dsn: str) -> dict[str, Any]:
    """One daemon batch under auto_explain (EXPLAIN ANALYZE of the statements inside
    notifyd.prune), rolled back: does the DELETE read the whole table to find its batch?"""
    conn = await asyncpg.connect(dsn, timeout=30)
    messages: list[str] = []
    conn.add_log_listener(lambda _c, m: messages.append(str(m.message)))
    try:
        try:
            await conn.execute("LOAD 'auto_explain'")
        except asyncpg.PostgresError as exc:
            return {"available": False, "why": str(exc)}
        await conn.execute(
            "SET auto_explain.log_min_duration = 0; "
            "SET auto_explain.log_nested_statements = on; "
            "SET auto_explain.log_analyze = on; SET client_min_messages = log"
        )
        rows = await conn.fetchval("SELECT count(*) FROM notifyd.notifications")
        tx = conn.transaction()
        await tx.start()
        try:
            t0 = time.perf_counter()
            await conn.fetchval(TRY_LOCK, PRUNE_LOCK)
            await conn.fetchval(PRUNE, RETENTION_DAYS * 86400.0, DAEMON_BATCH)
            took = time.perf_counter() - t0
        finally:
            await tx.rollback()
        await conn.execute("SET client_min_messages = notice")
    finally:
        await conn.close()
    delete = next((m for m in messages if "DELETE FROM notifyd.notifications" in m), "")
    scan = SEQ_SCAN.search(delete)
    return {
        "available": True,
        "table_rows": rows,
        "batch_ms": round(took * 1000, 1),
        "seq_scan": scan is not None,
        "seq_scan_ms": float(scan.group(1)) if scan else None,
        "seq_scan_rows": int(scan.group(2)) if scan else None,
        "delete_plan": delete.split("\n"),
    }


async def checks(dsn: str, old_max: dict[str, int], kept: int) -> list[str]:
    """What must hold after a pruning phase; each problem as a sentence."""
    conn = await asyncpg.connect(dsn, timeout=30)
    problems: list[str] = []
    try:
        secs = RETENTION_DAYS * 86400.0
        left = await conn.fetchval(OLD_COUNT, secs)
        if left:
            problems.append(f"{left} rows older than {RETENTION_DAYS:g} days are left")
        floors = {
            r[0]: r[1]
            for r in await conn.fetch(
                "SELECT stream, pruned_below FROM notifyd.streams WHERE stream = ANY($1)",
                list(old_max),
            )
        }
        behind = [s for s, seq in old_max.items() if floors.get(s, 0) <= seq]
        if behind:
            problems.append(
                f"{len(behind)} of {len(old_max)} streams with old rows have "
                f"pruned_below at or below their last old seq (e.g. {behind[0]})"
            )
        now_kept = await conn.fetchval(KEPT_COUNT, secs)
        if now_kept != kept:
            problems.append(
                f"{now_kept} rows younger than {RETENTION_DAYS:g} days, expected "
                f"{kept} (the recent seed and every writer insert)"
            )
        wrong = await conn.fetchval(UNREAD_WRONG)
        if wrong:
            problems.append(f"{wrong} streams' unread count differs from their unread rows")
    finally:
        await conn.close()
    return problems


# -- orchestration --------------------------------------------------------------------------------


async def bench(dsn: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    recent = args.old_rows // 10
    results["seeds"] = []
    s = await seed(dsn, args.old_rows, recent)
    say(f"seeded {args.old_rows:,} old and {recent:,} recent rows in {s['total_s']} s")
    results["seeds"].append({k: v for k, v in s.items() if k != "old_max_seq"})
    results["prune_plan"] = plan = await prune_plan(dsn)
    if plan.get("seq_scan"):
        say(f"the prune DELETE reads all {plan['seq_scan_rows']:,} rows of the table each batch")
    writers = Writers(dsn)
    try:
        await writers.open()
        phases = results["phases"] = []
        row = await phase(
            dsn, writers, "baseline (no pruning)", "baseline", None, 0.0, args.baseline
        )
        say(f"baseline: {row['writer_commits']} commits, p99 {row['writer_p99_ms']} ms")
        phases.append(row)
        for name, short, batch, pause in (
            (
                f"daemon: batches of {DAEMON_BATCH:,}, {DAEMON_PAUSE * 1000:.0f} ms pause",
                "daemon",
                DAEMON_BATCH,
                DAEMON_PAUSE,
            ),
            (f"batches of {BIG_BATCH:,}, no pause", f"{BIG_BATCH:,}", BIG_BATCH, 0.0),
        ):
            if batch == BIG_BATCH:
                s = await seed(dsn, args.old_rows, 0)  # the same old rows again
                say(f"re-seeded {args.old_rows:,} old rows in {s['total_s']} s")
                results["seeds"].append({k: v for k, v in s.items() if k != "old_max_seq"})
            row = await phase(dsn, writers, name, short, batch, pause, 0.0)
            say(
                f"{name}: {row['rows_pruned']:,} rows in {row['batches']} batches, batch max "
                f"{row['batch_max_ms']} ms; writers p99 {row['writer_p99_ms']} ms, max "
                f"{row['writer_max_ms']} ms"
            )
            row["problems"] = await checks(dsn, s["old_max_seq"], recent + writers.inserted)
            phases.append(row)
    finally:
        await writers.close()
    results["writer_failures"] = {"count": len(writers.failures), "first": writers.failures[:10]}
    results["problems"] = [f"{r['phase']}: {p}" for r in phases for p in r.get("problems", ())]
    if writers.failures:
        results["problems"].insert(
            0, f"{len(writers.failures)} writer inserts FAILED, e.g. {writers.failures[0]}"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "cpus": CORES,
            "git_head": infra.git_head(),
            "postgres_source": infra.postgres_source(),
            "old_rows": args.old_rows,
            "users": USERS,
            "writers": WRITERS,
            "writer_rate": RATE,
            "baseline_seconds": args.baseline,
            "retention_days": RETENTION_DAYS,
            "load_before": os.getloadavg()[0],
        }
    }
    with infra.bench_database() as dsn:
        infra.migrate(dsn)
        version, sync_commit, autovacuum = uvloop.run(
            admin(dsn, "SHOW server_version", "SHOW synchronous_commit", "SHOW autovacuum")
        )
        results["meta"].update(
            postgres=version, synchronous_commit=sync_commit, autovacuum=autovacuum
        )
        uvloop.run(bench(dsn, args, results))
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    return results


def table(
    rows: list[dict[str, Any]], columns: list[tuple[str, Callable[[dict[str, Any]], str]]]
) -> str:
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "|" + "---|" + "---:|" * (len(columns) - 1),
    ]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    return "\n".join(lines)


def num(v: Any) -> str:
    return "-" if v is None else f"{v:,}"


def summary(results: dict[str, Any]) -> str:
    meta = results["meta"]
    seeds = results["seeds"]
    out = [
        f"notifyd retention ({meta['mode']}): measured on this machine, {meta['cpus']} CPU cores "
        f"shared by PostgreSQL {meta['postgres'].split()[0]} (same machine, synchronous_commit="
        f"{meta['synchronous_commit']}, autovacuum={meta['autovacuum']}), the writers and the "
        f"pruner (one Python process); {meta['seconds']:.0f} s",
        f"{meta['old_rows']:,} rows {OLD_AGE} old over {USERS:,} streams (half of them read) "
        f"and {seeds[0]['recent_rows']:,} recent ones, seeded in {seeds[0]['total_s']} s "
        f"(again, old rows only, in {seeds[-1]['total_s']} s before the last row); "
        f"{meta['writers']} writers, {meta['writer_rate']:g} single-row autocommit "
        f"notifyd.notify()/s into the same streams; notifyd.prune('{meta['retention_days']:g} "
        "days') one batch per transaction, as Store.prune",
        "",
        table(
            results["phases"],
            [
                ("phase", lambda r: r["phase"]),
                ("rows pruned", lambda r: num(r["rows_pruned"])),
                (
                    "pruned rows/s (in batches / overall)",
                    lambda r: (
                        f"{num(r['pruned_per_s_busy'])} / {num(r['pruned_per_s_wall'])}"
                        if r["batch"]
                        else "-"
                    ),
                ),
                ("batches", lambda r: num(r["batches"])),
                (
                    "batch ms p50 / p99 / max",
                    lambda r: (
                        f"{r['batch_p50_ms']} / {r['batch_p99_ms']} / {r['batch_max_ms']}"
                        if r["batch"]
                        else "-"
                    ),
                ),
                ("writer commits", lambda r: f"{r['writer_commits']:,} ({r['writer_per_s']}/s)"),
                (
                    "writer ms p50 / p99 / max",
                    lambda r: f"{r['writer_p50_ms']} / {r['writer_p99_ms']} / {r['writer_max_ms']}",
                ),
                ("writer commits > 100 ms", lambda r: num(r["writer_over_100ms"])),
                (
                    "writer ms from due time p99 / max",
                    lambda r: f"{r['writer_from_due_p99_ms']} / {r['writer_from_due_max_ms']}",
                ),
                (
                    "writers seen waiting on a lock (share of samples, most at once)",
                    lambda r: (
                        f"{r['waits']['writers_waiting_share']:.0%}, "
                        f"{r['waits']['writers_waiting_max']}"
                    ),
                ),
                ("lock timeouts", lambda r: num(r["lock_timeouts"])),
                ("machine busy", lambda r: f"{r['machine_busy']:.0%}"),
            ],
        ),
        "",
        "lock waits seen (20 ms samples): "
        + "; ".join(
            f"{r['short']}: "
            + (", ".join(f"{k} {v}" for k, v in r["waits"]["wait_events"].items()) or "none")
            for r in results["phases"]
        ),
        f"writer inserts failed: {results['writer_failures']['count']}",
        plan_line(results["prune_plan"]),
    ]
    if results["problems"]:
        out += ["", "PROBLEMS:"] + [f"  - {p}" for p in results["problems"]]
    else:
        out.append(
            "checks: no old row left, every stream's pruned_below past its old rows, "
            "every recent row and writer insert kept, unread counts consistent"
        )
    return "\n".join(out)


def plan_line(plan: dict[str, Any]) -> str:
    if not plan["available"]:
        return f"plan of a prune batch: unknown (auto_explain: {plan['why']})"
    if not plan["seq_scan"]:
        return (
            f"plan of a prune batch ({plan['table_rows']:,} rows in the table): the DELETE "
            f"finds its rows by index ({plan['batch_ms']} ms under EXPLAIN ANALYZE)"
        )
    return (
        f"note: with {plan['table_rows']:,} rows in the table, each prune batch's DELETE "
        f"(id IN (subquery), planned as a hash semi join) reads the whole table: Seq Scan "
        f"of {plan['seq_scan_rows']:,} rows, {plan['seq_scan_ms']} ms of a "
        f"{plan['batch_ms']} ms batch under EXPLAIN ANALYZE (the planner's estimate at "
        "this size; a fixed cost per batch, whatever the batch size)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 old rows and a 2 s baseline")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.old_rows, args.baseline = (20_000, 2.0) if args.quick else (200_000, 5.0)
    load = os.getloadavg()[0]
    if load > CORES * 0.75:
        say(f"warning: load average {load:.1f} on {CORES} cores; the figures will suffer")
    results = infra.guarded(lambda: run(args))
    if isinstance(results, int):
        return results
    report.write_json(results, args.output)
    print(summary(results))
    print(f"\n(results in {args.output})")
    if results["problems"]:
        say("FAILED: " + "; ".join(results["problems"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
