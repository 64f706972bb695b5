"""Load-generator processes of the chaos run (bench/chaos.py), driven over a pipe like the
benchmark's: WebSocket devices, each notifyd.client's loop (protocol/README.md §7) audited
through its hooks for every (stream, seq) it receives, and SQL writers whose inserts survive
PostgreSQL restarts (an insert with an unknown outcome is reconciled against the table)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import asyncpg
import infra
import orjson
import uvloop

from notifyd.client import RETRY_LATER, NotifydClient, Observer, SyncRequest
from notifyd.core.auth import issue_token

CLIENT_NICE = 5  # the daemon under test gets the CPU first; clients that lag meet 4008
OPEN_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
TOKEN_TTL = 6 * 3600
BACKOFF_BASE = 0.25  # seconds; doubled per failed attempt...
BACKOFF_CAP = 2.0  # ...up to this (the README's loop caps at 30 s; a chaos run wants ~2 s)
QUICK = 0.25  # 1001 and 4008: "reconnect at once (after a short random delay)"
EXAMPLES = 20  # examples kept per kind of anomaly and device


# -- devices ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    ref: str
    tick: int  # the device's event counter when it was sent
    cursors: dict[str, int]
    final: int  # the pool's final-sync epoch when it was sent


class Device(Observer):
    """One client device (a browser tab, a phone): a user's token, a stored set of cursors that
    outlives connections (the client's), and the accounting of everything received, whatever
    the connection, which the client's hooks feed."""

    def __init__(self, pool: DevicePool, name: str, user: str, roles: list[str]) -> None:
        self.pool = pool
        self.name = name
        self.user = user
        self.roles = roles  # as in the token; the server lower-cases them
        self.streams = {f"user:{user}", *(f"role:{r.lower()}" for r in roles), "all"}
        self.first_cursors: dict[str, int] | None = None  # of the very first sync-request
        # stream -> seq -> tick of its latest receipt (any connection)
        self.received: dict[str, dict[int, int]] = {s: {} for s in self.streams}
        self.tick = 0
        # this connection
        self.requested = False  # a sync-request was sent on this connection
        self.request: Request | None = None  # the one awaiting its response
        # per stream, the last seq delivered in order on this connection; empty until its
        # first sync-response (with ?sync=1 nothing comes live before it)
        self.upto: dict[str, int] = {}
        self.final_done = 0  # the last final-sync epoch this device completed
        # accounting
        self.connect_failures: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.dups: Counter[str] = Counter()
        self.dup_examples: list[dict[str, Any]] = []
        self.misrouted = 0
        self.misrouted_examples: list[str] = []
        self.gaps: list[dict[str, Any]] = []  # live or response items out of seq order
        self.gap_count = 0
        self.resets = 0
        self.responses = 0
        self.sync_retries = 0
        self.errors: Counter[str] = Counter()
        self.anomalies: list[str] = []  # identity mismatches, unexpected responses...
        self.dropped_by_us = 0
        self.crashed: str | None = None
        self.client = NotifydClient(
            pool.url,
            self._fresh_token,  # on every connect, so a 4001 gets a fresh one
            dict.fromkeys(self.streams, 0),  # a fresh database: everything is above 0
            BACKOFF_BASE,
            BACKOFF_CAP,
            quick=QUICK,
            observer=self,
            connect_options={
                "open_timeout": OPEN_TIMEOUT,
                "close_timeout": CLOSE_TIMEOUT,
                "proxy": None,
                "max_queue": None,
            },
        )

    async def _fresh_token(self) -> str:
        return issue_token(self.pool.secret, self.user, self.roles, ttl=TOKEN_TTL)

    @property
    def connects(self) -> int:
        return self.client.connections

    async def run(self) -> None:
        try:
            async for _event in self.client.events():
                pass
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.crashed = traceback.format_exc()[-2000:]

    # -- the client's hooks ----------------------------------------------------------------

    def connect_failed(self, exc: BaseException) -> None:
        self.connect_failures[type(exc).__name__] += 1

    def opened(self) -> None:
        self.requested = False
        self.request = None
        self.upto = {}

    def frame(self, frame: dict[str, Any], binary: bool) -> None:
        self.tick += 1
        if binary:
            self.anomalies.append("binary frame from the server")

    def confirmed(self, streams: frozenset[str]) -> None:
        if streams != self.streams and len(self.anomalies) < EXAMPLES:
            self.anomalies.append(f"confirmed streams {sorted(streams)} != {sorted(self.streams)}")

    def sync_sent(self, request: SyncRequest) -> None:
        self.tick += 1
        if self.first_cursors is None:
            self.first_cursors = dict(request.cursors)
        self.request = Request(request.ref, self.tick, request.cursors, self.pool.final_epoch)
        self.requested = True

    def error(self, data: dict[str, Any], ref: str | None) -> None:
        code = str(data.get("code"))
        self.errors[code] += 1
        if self.request is None or ref != self.request.ref:
            return
        self.request = None  # the sync was refused (the client retries it); live goes on
        if code in RETRY_LATER:
            self.sync_retries += 1
        elif len(self.anomalies) < EXAMPLES:
            self.anomalies.append(f"sync-request refused: {code} {data.get('message')}")

    def closed(self, code: int | None) -> None:
        self.close_codes[str(code if code is not None else 1006)] += 1
        self.request = None
        if code == 4003:  # revoked: the client signs out (nothing in this run revokes)
            self.anomalies.append("closed with 4003 (access revoked)")

    def sync_received(self, answered: SyncRequest | None, data: dict[str, Any]) -> None:
        """README §7 step 3, checked."""
        tick = self.tick
        request = self.request
        if answered is None or request is None or answered.ref != request.ref:
            self.anomalies.append(
                f"sync-response to none awaited (awaiting {request.ref if request else None!r})"
            )
            request = Request("?", tick, {}, 0)
        self.request = None
        self.responses += 1
        reset = set(data["reset"])
        self.resets += len(reset)
        # a stream a previous page did not hold back went live since: the request's cursor
        # (that page's) is behind what came live, and the response goes on from the latter
        expect = {
            s: max(c, self.upto.get(s, c)) for s, c in request.cursors.items() if s not in reset
        }
        for n in data["notifications"]:
            stream, seq = n["stream"], n["seq"]
            self.receive(stream, seq, tick, request, reset)
            if stream in expect:
                if seq != expect[stream] + 1:
                    self.gap("response", stream, expect[stream], seq)
                expect[stream] = max(seq, expect[stream])
        cursors: dict[str, int] = data["cursors"]
        for stream, last in expect.items():
            if cursors.get(stream) != last:
                self.gap("response cursor", stream, last, cursors.get(stream, -1))
        self.upto = dict(cursors)
        if data["hasMore"]:
            return
        if self.pool.final_epoch > self.final_done:
            if request.final == self.pool.final_epoch:
                self.final_done = request.final
            else:  # a sync that began before the final one was asked for: once more
                self.pool.spawn(self.final_sync())

    def live(self, notification: dict[str, Any]) -> None:
        stream, seq = notification["stream"], notification["seq"]
        if not self.receive(stream, seq, self.tick, None, set()):
            return
        last = self.upto.get(stream)
        if last is None:
            self.gap("live before the first sync-response", stream, -1, seq)
        else:
            if seq != last + 1:
                self.gap("live", stream, last, seq)
            self.upto[stream] = max(seq, last)

    # -- the accounting --------------------------------------------------------------------

    def receive(
        self, stream: str, seq: int, tick: int, request: Request | None, reset: set[str]
    ) -> bool:
        """Account for one received item; False when it is of a stream not ours."""
        seen = self.received.get(stream)
        if seen is None:
            self.misrouted += 1
            if len(self.misrouted_examples) < EXAMPLES:
                self.misrouted_examples.append(f"{self.name} got {stream} seq {seq}")
            return False
        prev = seen.get(seq)
        seen[seq] = tick
        if prev is None:
            return True
        if request is not None:  # in a sync-response
            cursor = request.cursors.get(stream)
            if cursor is not None and seq <= cursor and stream not in reset:
                kind = "response item at or below the request's cursor"
            elif prev < request.tick:
                kind = "response repeats an item received before the request was sent"
            else:
                kind = "response repeats an item received after the request was sent"
        elif not self.requested:
            kind = "live repeat before the first sync-request"
        elif self.request is not None:
            kind = "live repeat while a sync-request was pending"
        else:
            kind = "live repeat after the sync-response"
        self.dups[kind] += 1
        if len(self.dup_examples) < EXAMPLES:
            example = {
                "device": self.name,
                "stream": stream,
                "seq": seq,
                "kind": kind,
                "at": time.time(),
                "connection": self.connects,
                "frames_since_previous": tick - prev,
            }
            if request is not None:
                # > 0: the first copy came that many frames after the request was sent
                example["previous_frames_after_request"] = prev - request.tick
            self.dup_examples.append(example)
        return True

    def gap(self, where: str, stream: str, last: int, seq: int) -> None:
        self.gap_count += 1
        if len(self.gaps) < EXAMPLES:
            self.gaps.append(
                {
                    "device": self.name,
                    "where": where,
                    "stream": stream,
                    "after": last,
                    "got": seq,
                    "at": time.time(),
                    "connection": self.connects,
                }
            )

    async def final_sync(self) -> None:
        """One more sync-request from the stored cursors (README §7's), unless the sync under
        way or the next connection's stands for it."""
        await self.client.resync()

    def drop(self, abrupt: bool) -> bool:
        if not self.client.connected:
            return False
        self.dropped_by_us += 1
        self.pool.spawn(self.client.disconnect(abrupt, "chaos: device goes away"))
        return True

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "user": self.user,
            "roles": self.roles,
            "streams": sorted(self.streams),
            "first_cursors": self.first_cursors,
            "received": {s: _ranges(sorted(seqs)) for s, seqs in self.received.items()},
            "dups": dict(self.dups),
            "dup_examples": self.dup_examples,
            "misrouted": self.misrouted,
            "misrouted_examples": self.misrouted_examples,
            "gaps": self.gap_count,
            "gap_examples": self.gaps,
            "resets": self.resets,
            "connects": self.connects,
            "connect_failures": dict(self.connect_failures),
            "close_codes": dict(self.close_codes),
            "responses": self.responses,
            "sync_retries": self.sync_retries,
            "errors": dict(self.errors),
            "anomalies": self.anomalies,
            "dropped_by_us": self.dropped_by_us,
            "final_done": self.final_done,
            "crashed": self.crashed,
        }


def _ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for seq in seqs:
        if out and seq == out[-1][1] + 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


class DevicePool:
    """The devices of one client process."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.secret = secret
        self.devices: list[Device] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.spawned: set[asyncio.Task[Any]] = set()
        self.final_epoch = 0

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.spawned.add(task)
        task.add_done_callback(self.spawned.discard)

    async def handle(self, command: str, args: Sequence[Any]) -> Any:
        if command == "start":
            return self.start(*args)
        if command == "status":
            return self.status()
        if command == "drop":
            return self.drop(*args)
        if command == "final_sync":
            return await self.final_sync(*args)
        if command == "report":
            return [d.report() for d in self.devices]
        if command == "stop":
            return await self.stop()
        raise ValueError(f"unknown command {command!r}")

    def start(self, specs: list[tuple[str, str, list[str]]]) -> int:
        loop = asyncio.get_running_loop()
        for name, user, roles in specs:
            device = Device(self, name, user, roles)
            self.devices.append(device)
            self.tasks.append(loop.create_task(device.run(), name=name))
        return len(specs)

    def status(self) -> dict[str, Any]:
        return {
            "devices": len(self.devices),
            "open": sum(1 for d in self.devices if d.client.state == "open"),
            "synced": sum(1 for d in self.devices if d.client.synced and not d.client.syncing),
            "crashed": [f"{d.name}: {d.crashed}" for d in self.devices if d.crashed][:3],
            "connects": sum(d.connects for d in self.devices),
            "received": sum(len(s) for d in self.devices for s in d.received.values()),
        }

    def drop(self, count: int, seed: int) -> dict[str, int]:
        rng = random.Random(seed)
        live = [d for d in self.devices if d.client.connected]
        chosen = rng.sample(live, min(count, len(live)))
        out = {"aborted": 0, "closed": 0}
        for device in chosen:
            abrupt = rng.random() < 0.5
            if device.drop(abrupt):
                out["aborted" if abrupt else "closed"] += 1
        return out

    async def final_sync(self, timeout: float) -> dict[str, Any]:
        """Every device sends one more sync-request (README §7's, from its stored cursors) and
        completes it (hasMore false); bounded."""
        self.final_epoch += 1
        for device in self.devices:
            self.spawn(device.final_sync())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(d.final_done == self.final_epoch for d in self.devices):
                break
            await asyncio.sleep(0.05)
        pending = [d.name for d in self.devices if d.final_done != self.final_epoch]
        return {"done": len(self.devices) - len(pending), "pending": pending[:20]}

    async def stop(self) -> dict[str, Any]:
        closing = [d.client.stop("chaos run over") for d in self.devices if d.client.connected]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 3):
                await asyncio.gather(*closing, return_exceptions=True)
        for task in [*self.tasks, *self.spawned]:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*self.tasks, *self.spawned, return_exceptions=True)
        return {"closed": len(closing)}


def clients_main(pipe: Pipe, url: str, secret: str) -> None:
    """Client process entry point (multiprocessing, spawn)."""
    infra.worker_setup()
    os.nice(CLIENT_NICE)
    pool = DevicePool(url, secret)
    uvloop.run(infra.command_loop(pipe, pool.handle))


# -- SQL writers --------------------------------------------------------------------------------

NOTIFY = "SELECT notifyd.notify($1, $2, 'chaos', 'm', $3::jsonb, $4)"
NOTIFY_ROLE = "SELECT notifyd.notify_role($1, $2, 'chaos', 'm', $3::jsonb, $4)"
BROADCAST = "SELECT notifyd.broadcast($1, 'chaos', 'm', $2::jsonb, $3)"
RECONCILE = "SELECT id FROM notifyd.notifications WHERE data @> $1::jsonb"
STATEMENT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
STOP_GRACE = 30.0  # seconds an insert in trouble may still take once the writers are stopped
MAX_ATTEMPTS = 200
LARGE_PAD = "x" * 9000  # over NOTIFY's 8000 bytes: the by-reference path of the daemon


class Writers:
    """`count` writers, each on its own connection, inserting at rate/count per second (open
    loop on a schedule; after an outage the schedule restarts rather than bursting). Every
    row's data carries {"w": writer, "k": key}: an insert whose commit is unknown (the
    connection broke) is looked up after reconnecting, and inserted again only if absent."""

    def __init__(
        self, dsn: str, count: int, rate: float, users: list[str], roles: list[str], seed: int
    ) -> None:
        self.dsn = dsn
        self.count = count
        self.rate = rate
        self.users = users
        self.roles = roles
        self.seed = seed
        self.stopping = False
        self.stop_deadline = float("inf")
        self.tasks: list[asyncio.Task[None]] = []
        self.conns: list[asyncpg.Connection | None] = [None] * count
        self.committed: Counter[str] = Counter()  # by kind: user, role, all
        self.large = 0
        self.unknown = 0  # inserts whose outcome was unknown...
        self.found_committed = 0  # ...and were found in the table
        self.retried = 0  # ...and were not, so were inserted again
        self.abandoned: list[str] = []
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self.max_insert_seconds = 0.0
        self.crashed: list[str] = []

    async def handle(self, command: str, args: Sequence[Any]) -> Any:
        if command == "start":
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(self._guard(w)) for w in range(self.count)]
            return self.count
        if command == "stats":
            return self.stats()
        if command == "stop":
            return await self.stop(*args)
        raise ValueError(f"unknown command {command!r}")

    def stats(self) -> dict[str, Any]:
        return {
            "committed": sum(self.committed.values()),
            "by_kind": dict(self.committed),
            "large": self.large,
            "unknown_outcome": self.unknown,
            "unknown_found_committed": self.found_committed,
            "unknown_retried": self.retried,
            "abandoned": self.abandoned[:10],
            "abandoned_count": len(self.abandoned),
            "errors": dict(self.errors),
            "reconnects": self.reconnects,
            "max_insert_seconds": round(self.max_insert_seconds, 3),
            "crashed": self.crashed,
        }

    async def stop(self, timeout: float) -> dict[str, Any]:
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_GRACE
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*self.tasks, return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        for conn in self.conns:
            if conn is not None:
                conn.terminate()
        return self.stats()

    async def _guard(self, w: int) -> None:
        try:
            await self._write(w)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.crashed.append(traceback.format_exc()[-2000:])

    async def _write(self, w: int) -> None:
        rng = random.Random(self.seed * 1000 + w)
        loop = asyncio.get_running_loop()
        period = self.count / self.rate
        due = loop.time() + rng.random() * period
        key = 0
        while not self.stopping:
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
                if self.stopping:
                    return
            elif now - due > 1.0:
                due = now  # behind after an outage: no burst
            due += period
            key += 1
            await self._insert(w, key, rng)

    def _statement(self, w: int, key: int, rng: random.Random) -> tuple[str, str, list[Any]]:
        data: dict[str, Any] = {"w": w, "k": key}
        if rng.random() < 0.01:
            data["pad"] = LARGE_PAD
            self.large += 1
        payload = orjson.dumps(data).decode()
        priority = rng.choice(("low", "medium", "medium", "high"))
        pick = rng.random()
        if pick < 0.80:
            return "user", NOTIFY, [rng.choice(self.users), "chaos:user", payload, priority]
        if pick < 0.95:
            role = rng.choice(self.roles)
            if rng.random() < 0.2:
                role = role.capitalize()  # notify_role lower-cases it
            return "role", NOTIFY_ROLE, [role, "chaos:role", payload, priority]
        return "all", BROADCAST, ["chaos:all", payload, priority]

    async def _insert(self, w: int, key: int, rng: random.Random) -> None:
        kind, sql, args = self._statement(w, key, rng)
        marker = orjson.dumps({"w": w, "k": key}).decode()
        unknown = False
        started = time.monotonic()
        for _attempt in range(MAX_ATTEMPTS):
            conn = await self._connection(w)
            if conn is None:
                break
            try:
                if unknown:
                    found = await conn.fetchval(RECONCILE, marker, timeout=STATEMENT_TIMEOUT)
                    if found is not None:
                        self.found_committed += 1
                        self.committed[kind] += 1
                        return
                    self.retried += 1
                    unknown = False
                await conn.fetchval(sql, *args, timeout=STATEMENT_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                if not unknown:
                    self.unknown += 1
                unknown = True
                self.conns[w] = None
                if not conn.is_closed():
                    conn.terminate()
                continue
            self.committed[kind] += 1
            self.max_insert_seconds = max(self.max_insert_seconds, time.monotonic() - started)
            return
        self.abandoned.append(
            f"writer {w} key {key} ({kind}; outcome {'unknown' if unknown else 'not committed'})"
        )

    async def _connection(self, w: int) -> asyncpg.Connection | None:
        conn = self.conns[w]
        if conn is not None and not conn.is_closed():
            return conn
        delay = 0.05
        while time.monotonic() < self.stop_deadline:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            self.conns[w] = conn
            self.reconnects += 1
            return conn
        return None


def writers_main(
    pipe: Pipe, dsn: str, count: int, rate: float, users: list[str], roles: list[str], seed: int
) -> None:
    """Writer process entry point (multiprocessing, spawn)."""
    infra.worker_setup()
    writers = Writers(dsn, count, rate, users, roles, seed)
    uvloop.run(infra.command_loop(pipe, writers.handle))
