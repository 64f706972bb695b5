"""SQL load generator: one process with a small asyncpg pool (autocommit: one statement, one
transaction) inserting notifications on an absolute schedule, or one broadcast; records commits."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

import asyncpg
import infra
import orjson
import uvloop

NOTIFY = "SELECT notifyd.notify($1, 'bench', 't', 'm', $2::jsonb)"
BROADCAST = "SELECT notifyd.broadcast('bench', 't', 'm', $1::jsonb)"
# `batch` notifications in one statement (one commit): past the NOTIFY commit lock's rate
# (in user order: concurrent statements that lock the same streams in other orders deadlock)
NOTIFY_MANY = (
    "INSERT INTO notifyd.notifications (user_id, type, title, message, data) "
    "SELECT u, 'bench', 't', 'm', $2::jsonb FROM unnest($1::text[]) AS x(u) "
    "ORDER BY u RETURNING id, user_id"
)
WARM_UP_USER = "bench-warm-up"
LAST_SEQ = "SELECT stream, max(seq) FROM notifyd.notifications GROUP BY stream"
MISSED_CHUNK = 1000  # users per INSERT while the storm's clients are away


class Writer:
    def __init__(self, dsn: str, pool_size: int) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None

    async def handle(self, command: str, args: Sequence[Any]) -> Any:
        if command == "open":
            return await self.open()
        if command == "rate_run":
            return await self.rate_run(*args)
        if command == "broadcast":
            return await self.broadcast()
        if command == "missed":
            return await self.missed(*args)
        raise ValueError(f"unknown command {command!r}")

    async def open(self) -> dict[str, Any]:
        """Connect the pool and warm every connection up (prepared statements, function
        plans) with statements in a transaction that is rolled back: nothing is delivered."""
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=self.pool_size, max_size=self.pool_size, timeout=30
        )
        pool = self.pool

        async def warm() -> None:
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                for _ in range(3):
                    await conn.fetchval(NOTIFY, WARM_UP_USER, "{}")
                    await conn.fetchval(BROADCAST, "{}")
                await tx.rollback()

        await asyncio.gather(*(warm() for _ in range(self.pool_size)))
        version = await pool.fetchval("SHOW server_version")
        return {"pool": self.pool_size, "server_version": version}

    async def rate_run(
        self, users: list[str], rate: float, seconds: float, seed: int, batch: int = 1
    ) -> dict[str, Any]:
        """Insert rate*seconds notifications, each for a random user of `users`, `batch` per
        statement; the i-th statement started at start + i*batch/rate (open loop: a slow
        commit does not delay the next ones)."""
        assert self.pool is not None
        pool = self.pool
        rng = random.Random(seed)
        n = round(rate * seconds / batch)
        targets = [[rng.choice(users) for _ in range(batch)] for _ in range(n)]
        out: list[list[tuple[int, str, float, float]]] = [[] for _ in range(n)]
        errors: list[str] = []

        async def insert(i: int) -> None:
            t0 = time.time()
            data = orjson.dumps({"t0": t0}).decode()
            try:
                if batch == 1:
                    rows = [(await pool.fetchval(NOTIFY, targets[i][0], data), targets[i][0])]
                else:
                    rows = [
                        (r["id"], r["user_id"])
                        for r in await pool.fetch(NOTIFY_MANY, targets[i], data)
                    ]
            except Exception as exc:
                errors.append(repr(exc))
                return
            t1 = time.time()  # the commit returned
            out[i] = [(nid, user, t0, t1) for nid, user in rows]

        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks = []
        max_lag = 0.0
        for i in range(n):
            due = start + i * batch / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            max_lag = max(max_lag, loop.time() - due)
            tasks.append(loop.create_task(insert(i)))
        _done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        done = [row for rows in out for row in rows]
        return {
            "ids": [r[0] for r in done],
            "users": [r[1] for r in done],
            "t0": [r[2] for r in done],
            "t1": [r[3] for r in done],
            "planned": n * batch,
            "batch": batch,
            "errors": errors[:5] + ([f"... and {len(errors) - 5} more"] if len(errors) > 5 else []),
            "unfinished": len(pending),
            "max_schedule_lag_ms": max_lag * 1000,
        }

    async def broadcast(self) -> dict[str, Any]:
        assert self.pool is not None
        t0 = time.time()
        nid = await self.pool.fetchval(BROADCAST, orjson.dumps({"t0": t0}).decode())
        t1 = time.time()
        return {"id": nid, "t0": t0, "t1": t1}

    async def missed(self, users: list[str]) -> dict[str, Any]:
        """For the reconnect storm, while every client is away: the last seq of every stream
        (what the clients have seen: they were drained), then one notification for each of
        `users` and one broadcast, which the clients must get from their syncs."""
        assert self.pool is not None
        last = {r[0]: r[1] for r in await self.pool.fetch(LAST_SEQ)}
        own: dict[str, int] = {}
        data = orjson.dumps({"t0": time.time()}).decode()
        for i in range(0, len(users), MISSED_CHUNK):
            rows = await self.pool.fetch(NOTIFY_MANY, users[i : i + MISSED_CHUNK], data)
            own.update((r["user_id"], r["id"]) for r in rows)
        broadcast = await self.pool.fetchval(BROADCAST, data)
        return {"last_seq": last, "own": own, "broadcast": broadcast}


def main(pipe: Pipe, dsn: str, pool_size: int) -> None:
    """Process entry point (multiprocessing, spawn)."""
    infra.worker_setup()
    writer = Writer(dsn, pool_size)
    uvloop.run(infra.command_loop(pipe, writer.handle))
