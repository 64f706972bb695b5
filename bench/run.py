"""notifyd benchmark: idle memory per connection, commit-to-client latency, broadcast
fan-out, a reconnect storm, sustained throughput, handshakes and the most connections, against
a real `notifyd serve` subprocess, then the same against each peer in bench/peers/ (Socket.IO
4 on Node, python-socketio); load from separate processes; the machine's floors beside them.

    python bench/run.py                   full run (10k connections; about 12 min with peers)
    python bench/run.py --quick           smoke run for CI (1,500 connections; under 2 min)
    python bench/run.py --peers ''        notifyd alone
    python bench/run.py --profile         also sample the daemon with py-spy (latency, fan-out,
                                          storm)
    python bench/run.py --profile native  the same with C frames (pauses the daemon per sample)
    python bench/run.py --baseline REV    also notifyd at git commit REV, beside this tree's
    python bench/run.py --only storm      one scenario (or several, comma-separated)

PostgreSQL: $NOTIFYD_BENCH_DSN (a server URL; a database notifyd_bench_<pid> is created on it
and dropped afterwards), else an embedded server in a temporary directory. Results go to
bench/results/latest.json and a summary table to stdout; progress to stderr. The peers run one
after the other on the same database with the same load generator (speaking Socket.IO to
them), after npm and pip install their dependencies into bench/.peers/ on first use; notifyd
beside them goes to bench/results/latest-peers.md (a markdown table with ratios), and PNG plots
(latency by percentile, memory per connection) beside the JSON (bench/plots.py draws them).

The fan-out target is judged on the CPU time of the daemon's write loop, from its
notifyd.core.fanout log line (it runs at NOTIFYD_LOG_LEVEL=INFO); its wall time and commit -> last
client are shown beside it. A figure the load generator bounded (a client process above 90% of a
core, or the writer behind its schedule) is marked as such. Exit status: 0 when the run completed,
whatever the figures; 1 when something broke in notifyd's part (notifications missing, duplicated or
misrouted, connections failed or dropped, a process died or timed out); a peer that breaks down is
reported beside its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import floor
import infra
import peers
import plots
import report
import spy
import sql_writer
import ws_clients
from infra import BenchError, CpuMeter, Daemon, Worker, say

HERE = Path(__file__).resolve().parent
CORES = os.cpu_count() or 1
CLIENT_PROCESSES = 2
HANDSHAKES_IN_FLIGHT = 200  # across all client processes: the listen backlog is 4096
WRITER_POOL = 4
SETTLE_SECONDS = 1.0
DRAIN_TIMEOUT = 10.0
BROADCAST_TIMEOUT = 30.0
IDLE_BASELINE_SECONDS = 2.0
DAEMON_LOG_LEVEL = "INFO"  # for notifyd.core.fanout's line per fan-out to >= 1000 connections
# the logger of the fan-out line; the second is its name before notifyd/core/ (--baseline)
FANOUT_LOGGERS = ("notifyd.core.fanout", "notifyd.fanout")
FANOUT_MSG = re.compile(r"fan-out to (\d+) connections took ([\d.]+) ms(?:, ([\d.]+) ms CPU)?")
FANOUT_STREAM = re.compile(r"\((\S+) seq (\d+)\)")
FANOUT_LOG_WAIT = 2.0  # for the line, once the clients had the broadcast (none once one never came)


@dataclass(frozen=True)
class Scale:
    idle_levels: tuple[int, ...]  # connections at each RSS reading; the first must be 0
    latency_rate: float  # inserts per second
    latency_seconds: float
    latency_windows: int  # each latency run this many times: the median window by p99 shown
    fast_rate: float  # a second latency run at this many notifications per second...
    fast_batch: int  # ...this many per INSERT (one commit each: past the NOTIFY lock's rate)
    broadcasts: int
    broadcast_gap: float  # seconds between broadcasts
    storm: bool  # the reconnect storm, with every connection open by then
    ramp: tuple[float, ...]  # sustained throughput: notifications/s, a step each...
    ramp_seconds: float  # ...this long, until p99 passes RAMP_P99_MS
    handshakes: int  # connections opened (then closed) for the handshake rate
    most: int  # the last scenario opens connections up to this many (0: skipped)
    most_step: int
    only: tuple[str, ...] = ()  # these scenarios alone (--only); empty: every one

    @property
    def connections(self) -> int:
        return self.idle_levels[-1]


# 19,500: what one process can hold under this machine's 20,000 open files per process
FULL = Scale(
    idle_levels=(0, 1_000, 10_000),
    latency_rate=1000,
    latency_seconds=10,
    latency_windows=3,
    fast_rate=5000,
    fast_batch=10,
    broadcasts=5,
    broadcast_gap=1.0,
    storm=True,
    ramp=(1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_000, 10_000, 14_000, 20_000, 28_000, 40_000),
    ramp_seconds=5,
    handshakes=5_000,
    most=19_500,
    most_step=2_500,
)
# (1,500 connections: the daemon logs its write time for fan-outs to 1,000 or more)
QUICK = Scale(
    idle_levels=(0, 200, 1_500),
    latency_rate=1000,
    latency_seconds=2,
    latency_windows=1,
    fast_rate=5000,
    fast_batch=10,
    broadcasts=5,
    broadcast_gap=0.5,
    storm=True,
    ramp=(1_000, 5_000),
    ramp_seconds=1,
    handshakes=500,
    most=0,
    most_step=0,
)
HANDSHAKES_CLOSE_TIMEOUT = 3.0  # then the sockets still open are aborted: not measured
RAMP_P99_MS = 100.0  # sustained throughput: the highest rate whose p99 stays under this
RAMP_COMMITS = 500  # per second at most: beyond, more notifications per INSERT
RAMP_KEEP_UP = 0.95  # of the planned rate: below, the writer (or PostgreSQL) set the pace
# A step the load generator could not keep to is run again before it ends the ramp (a stall
# of PostgreSQL or a client on the shared cores is not the server's limit)
RAMP_ATTEMPTS = 2


class Bench:
    """The three scenarios, run in order on one daemon: the connections opened for the idle
    memory reading are the ones notified in the latency and fan-out scenarios."""

    def __init__(
        self,
        daemon: Daemon,
        clients: list[Worker],
        writer: Worker,
        scale: Scale,
        profile_dir: Path | None,
        profile_native: bool = False,
        profile_tag: str = "",
    ) -> None:
        self.daemon = daemon
        self.profile_tag = profile_tag  # beside a profile's name: which server it is of
        self.clients = clients
        self.writer = writer
        self.scale = scale
        self.profile_dir = profile_dir
        self.profile_native = profile_native
        self.users_of: list[list[str]] = [[] for _ in clients]  # connected users per process
        self.meter = CpuMeter(
            {"daemon": daemon.pid, **{c.name: c.pid for c in clients}, "writer": writer.pid},
            server=infra.server_pid(),
        )
        self.profiles: dict[str, dict[str, Any]] = {}
        self.raw: dict[str, Any] = {}  # per-sample data, for bench/results/*.raw.json
        # each client's counters at its last answer: frames, and the reads they came in
        self.frames = [0] * len(clients)
        self.reads = [0] * len(clients)
        self.fanout_logged: bool | None = None  # does the daemon log its fan-out time?

    # -- helpers ------------------------------------------------------------------------

    def new_frames(self, answers: list[dict[str, Any]]) -> tuple[int, int]:
        """Frames the clients received since their previous answers, and in how many
        socket reads."""
        frames = reads = 0
        for i, answer in enumerate(answers):
            frames += answer["frames"] - self.frames[i]
            reads += answer["reads"] - self.reads[i]
            self.frames[i], self.reads[i] = answer["frames"], answer["reads"]
        return frames, reads

    def client_cpu(self) -> dict[str, float]:
        """CPU seconds of each client process in the meter's last window."""
        return {
            name: used for name, used in self.meter.seconds.items() if name.startswith("client")
        }

    def connect(self, users: list[str]) -> dict[str, Any]:
        """Open connections for `users`, dealt round-robin to the client processes."""
        parts = [users[i :: len(self.clients)] for i in range(len(self.clients))]
        for client, part in zip(self.clients, parts, strict=True):
            client.send("connect", part)
        timeout = 60 + 0.02 * len(users)
        answers = [c.receive(timeout) for c in self.clients]
        self.new_frames(answers)
        failed = sum(a["failed"] for a in answers)
        for i, (part, answer) in enumerate(zip(parts, answers, strict=True)):
            self.users_of[i].extend(_opened(part, answer))
        if failed:
            errors = sorted({e for a in answers for e in a["errors"]})
            say(f"warning: {failed} of {len(users)} connections failed: {errors}")
            if failed > 0.05 * len(users):
                raise BenchError(f"{failed} of {len(users)} connections failed: {errors}")
        return {
            "opened": len(users) - failed,
            "failed": failed,
            "seconds": max(a["seconds"] for a in answers),
        }

    def live(self) -> int:
        answers = [c.call("stats", timeout=30) for c in self.clients]
        self.new_frames(answers)
        return sum(a["live"] for a in answers)

    @contextlib.contextmanager
    def profiled(self, name: str, seconds: float) -> Iterator[None]:
        """py-spy the daemon for the body's duration when --profile was given."""
        exe = spy.find_py_spy() if self.profile_dir is not None else None
        if exe is None or self.profile_dir is None:
            if self.profile_dir is not None:
                say("py-spy not found: no profile")
            yield
            return
        mode = "native" if self.profile_native else "python"
        recording = spy.Recording(
            exe,
            self.daemon.pid,
            seconds,
            self.profile_dir / f"profile-{name}{self.profile_tag}-{mode}.txt",
            native=self.profile_native,
        )
        try:
            yield
        finally:
            try:
                self.profiles[name + self.profile_tag] = recording.finish()
            except Exception as exc:
                recording.kill()
                self.profiles[name + self.profile_tag] = {"error": repr(exc)}

    # -- scenario 1 ---------------------------------------------------------------------

    def idle_memory(self) -> dict[str, Any]:
        levels: list[dict[str, Any]] = []
        connected = 0
        connect_seconds = 0.0
        self.meter.start()
        for n in self.scale.idle_levels:
            opened: dict[str, Any] = {}
            if n > connected:
                say(f"idle memory: opening connections {connected:,} .. {n - 1:,}")
                opened = self.connect([f"u{i}" for i in range(connected, n)])
                connect_seconds += opened["seconds"]
                connected = n
            time.sleep(SETTLE_SECONDS)
            self.daemon.check_alive()
            rss = self.daemon.rss_kb()
            live = self.live()
            say(f"idle memory: {live:,} live connections, daemon RSS {rss / 1024:,.1f} MB")
            levels.append({"connections": n, "live": live, "rss_kb": rss, **opened})
        cpu = self.meter.stop()
        client_seconds = sum(self.client_cpu().values())
        opened_total = sum(lv.get("opened", 0) for lv in levels)
        base = levels[0]["rss_kb"]
        per_conn = {
            str(lv["connections"]): (lv["rss_kb"] - base) / lv["live"]
            for lv in levels[1:]
            if lv["live"]
        }
        return {
            "levels": levels,
            "kb_per_connection": per_conn,
            "connect_rate": connected / connect_seconds if connect_seconds else 0.0,
            "failed": sum(lv.get("failed", 0) for lv in levels),
            "client_cpu_seconds": client_seconds,
            "client_cpu_us_per_connection": client_seconds * 1e6 / opened_total
            if opened_total
            else float("nan"),
            "cpu": cpu,
            "saturated": report.saturated(cpu),
        }

    # -- scenario 2 ---------------------------------------------------------------------

    def latency_windows(
        self, rate: float | None = None, batch: int = 1, raw: str = "latency"
    ) -> dict[str, Any]:
        """latency() in scale.latency_windows back-to-back windows: one window's tail moves
        with whatever else the shared cores did then (twice over between windows of the same
        server, here), so the window with the median p99 is the figure, its raw times kept; the
        others' percentiles are listed beside it, and what went wrong in any window counts."""
        windows = [
            self.latency(rate, batch, raw=f"{raw}#{i}", profile=i == 0)
            for i in range(self.scale.latency_windows)
        ]
        chosen = report.median_window([w["commit_to_client_ms"]["p99"] for w in windows])
        for i in range(len(windows)):
            times = self.raw.pop(f"{raw}#{i}")
            if i == chosen:
                self.raw[raw] = times
        out = dict(windows[chosen])
        for key in (
            "planned",
            "sent",
            "received",
            "missing",
            "duplicates",
            "unexpected",
            "misrouted",
            "foreign",
            "malformed",
            "unfinished_inserts",
        ):
            out[key] = sum(w[key] for w in windows)
        out["insert_errors"] = [e for w in windows for e in w["insert_errors"]]
        for key in ("foreign_examples", "malformed_examples"):
            out[key] = [e for w in windows for e in w[key]][:5]
        out["dropped"] = report.merge_counts(w["dropped"] for w in windows)
        out["saturated"] = sorted({p for w in windows for p in w["saturated"]})
        out["window"] = chosen
        out["windows"] = [
            {
                "commit_to_client_ms": {
                    k: w["commit_to_client_ms"][k] for k in ("p50", "p99", "p999", "max")
                },
                "server_cpu_s_per_1000": w["server_cpu_s_per_1000"],
                "saturated": w["saturated"],
            }
            for w in windows
        ]
        return out

    def latency(
        self,
        rate: float | None = None,
        batch: int = 1,
        seconds: float | None = None,
        raw: str | None = "latency",
        profile: bool = True,
    ) -> dict[str, Any]:
        """`rate` notifications/s for `seconds` to random connected users, `batch` per INSERT;
        the per-notification times are kept under `raw` in the raw results."""
        s = self.scale
        rate = rate or s.latency_rate
        seconds = seconds or s.latency_seconds
        users = [u for part in self.users_of for u in part]
        owner = {u: i for i, part in enumerate(self.users_of) for u in part}
        say(
            f"latency: {rate:,.0f} notifications/s ({batch} per INSERT) for "
            f"{seconds:g} s over {len(users):,} users"
        )
        self.meter.start()
        with (
            self.profiled(f"latency-{rate:g}", seconds + 1) if profile else contextlib.nullcontext()
        ):
            sent = self.writer.call(
                "rate_run", users, rate, seconds, os.getpid(), batch, timeout=seconds + 90
            )
            expected = [0] * len(self.clients)
            for user in sent["users"]:
                expected[owner[user]] += 1
            for client, n in zip(self.clients, expected, strict=True):
                client.send("drain", n, DRAIN_TIMEOUT)
            got = [c.receive(DRAIN_TIMEOUT + 30) for c in self.clients]
        cpu = self.meter.stop()
        server_seconds = self.meter.seconds["daemon"]
        frames, reads = self.new_frames(got)
        client_seconds = sum(self.client_cpu().values())
        self.daemon.check_alive()
        if sent["errors"]:
            say(f"warning: insert errors: {sent['errors']}")

        by_id = {
            nid: (t0, t1, user)
            for nid, t0, t1, user in zip(
                sent["ids"], sent["t0"], sent["t1"], sent["users"], strict=True
            )
        }
        counts: Counter[int] = Counter()
        commit_to_client: list[float] = []
        insert_to_client: list[float] = []
        misrouted = unexpected = 0
        for answer in got:
            for nid, at, user in zip(answer["ids"], answer["times"], answer["users"], strict=True):
                counts[nid] += 1
                origin = by_id.get(nid)
                if origin is None:
                    unexpected += 1
                    continue
                if origin[2] != user:
                    misrouted += 1
                if counts[nid] == 1:
                    commit_to_client.append(at - origin[1])
                    insert_to_client.append(at - origin[0])
        if raw is not None:
            rows = []
            for answer in got:
                for nid, at in zip(answer["ids"], answer["times"], strict=True):
                    if nid in by_id:
                        t0, t1, user = by_id[nid]
                        rows.append([nid, user, t0, t1, at])
            self.raw[raw] = {
                "columns": ["id", "user", "t_before_insert", "t_commit_returned", "t_received"],
                "rows": rows,
            }
        round_trip = [t1 - t0 for t0, t1 in zip(sent["t0"], sent["t1"], strict=True)]
        span = max(sent["t1"]) - min(sent["t0"]) if sent["t0"] else 0.0
        # commits per second from the first to the last (a statement's round trip left out:
        # on a short run it would pass for the writer falling behind)
        commit_span = (max(sent["t1"]) - min(sent["t1"]) + batch / rate) if sent["t1"] else 0.0
        return {
            "users": len(users),
            "rate": rate,
            "batch": batch,
            "seconds": seconds,
            "planned": sent["planned"],
            "sent": len(by_id),
            "received": sum(1 for nid in counts if nid in by_id),
            "missing": sum(1 for nid in by_id if nid not in counts),
            "duplicates": sum(n - 1 for n in counts.values() if n > 1),
            "unexpected": unexpected,
            "misrouted": misrouted,
            "foreign": sum(a["foreign"] for a in got),
            "foreign_examples": [e for a in got for e in a["foreign_examples"]][:5],
            "dropped": report.merge_counts(a["dropped"] for a in got),
            "malformed": sum(a["malformed"] for a in got),
            "malformed_examples": [e for a in got for e in a["malformed_examples"]][:3],
            "frames": frames,
            "reads": reads,
            "client_cpu_seconds": client_seconds,
            # the server's CPU over the run (idle work included) per 1,000 delivered
            "server_cpu_seconds": server_seconds,
            "server_cpu_s_per_1000": (server_seconds * 1000 / len(counts) if counts else math.nan),
            "client_cpu_us_per_frame": client_seconds * 1e6 / frames if frames else math.nan,
            "insert_errors": sent["errors"],
            "unfinished_inserts": sent["unfinished"],
            "achieved_rate": len(by_id) / span if span else 0.0,
            "commit_rate": len(by_id) / commit_span if commit_span else 0.0,
            "max_schedule_lag_ms": sent["max_schedule_lag_ms"],
            "commit_to_client_ms": report.distribution_ms(commit_to_client),
            "insert_to_client_ms": report.distribution_ms(insert_to_client),
            "insert_round_trip_ms": report.distribution_ms(round_trip),
            "cpu": cpu,
            "saturated": report.saturated(cpu),
            "cores_busy": report.cores_busy(cpu, CORES),
        }

    # -- scenario 3 ---------------------------------------------------------------------

    def fanout(self) -> dict[str, Any]:
        s = self.scale
        pid = self.daemon.pid
        n = self.live()
        before = infra.oncpu_seconds(pid)
        time.sleep(IDLE_BASELINE_SECONDS)
        idle_rate = (infra.oncpu_seconds(pid) - before) / IDLE_BASELINE_SECONDS
        say(
            f"fan-out: {s.broadcasts} broadcasts to {n:,} connections "
            f"(daemon idle CPU {idle_rate * 100:.1f}%)"
        )
        runs: list[dict[str, Any]] = []
        seconds = s.broadcasts * (s.broadcast_gap + 0.5) + 1
        with self.profiled("fanout", seconds):
            for _ in range(s.broadcasts):
                time.sleep(s.broadcast_gap)
                runs.append(self._one_broadcast(n, idle_rate))
        self.daemon.check_alive()
        cpu_max = {name: max(r["cpu"][name] for r in runs) for name in runs[0]["cpu"]}

        def median(key: str) -> float:
            values = [r[key] for r in runs if not math.isnan(r[key])]
            return float(statistics.median(values)) if values else math.nan

        keys = (
            "last_ms",
            "first_ms",
            "wall_us_per_conn",
            "cpu_us_per_conn",
            "oncpu_us_per_conn",
            "net_us_per_conn",
            "last_from_insert_ms",
            "server_write_ms",
            "server_write_us_per_conn",
            "server_write_cpu_us_per_conn",
            "client_busy",
            "client_cpu_us_per_frame",
        )
        last = runs[-1]
        return {
            "connections": n,
            "runs": runs,
            "median": {k: median(k) for k in keys},
            "idle_cpu_fraction": idle_rate,
            "received_total": sum(r["received"] for r in runs),
            "expected_total": sum(r["expected"] for r in runs),
            "server_write_logged": sum(1 for r in runs if r["server_write"] is not None),
            "foreign": last["foreign"],
            "foreign_examples": last["foreign_examples"],
            "dropped": last["dropped"],
            "malformed": last["malformed"],
            "malformed_examples": last["malformed_examples"],
            "cpu_max": cpu_max,
            "saturated": report.saturated(cpu_max),
            "clients_saturated": median("client_busy") > report.SATURATED,
            "cores_busy": any(r["cores_busy"] for r in runs),
        }

    def _one_broadcast(self, n: int, idle_rate: float) -> dict[str, Any]:
        pid = self.daemon.pid
        log_offset = self.daemon.log_size()
        self.meter.start()
        wall0, cpu0, on0 = time.monotonic(), infra.cpu_seconds(pid), infra.oncpu_seconds(pid)
        sent = self.writer.call("broadcast", timeout=30)
        for client in self.clients:
            client.send("await_broadcast", sent["id"], BROADCAST_TIMEOUT)
        got = [c.receive(BROADCAST_TIMEOUT + 10) for c in self.clients]
        wall1, cpu1, on1 = time.monotonic(), infra.cpu_seconds(pid), infra.oncpu_seconds(pid)
        cpu = self.meter.stop()
        client_cpu = self.client_cpu()
        frames, reads = self.new_frames(got)
        received = sum(a["count"] for a in got)
        expected = sum(a["expected"] for a in got)
        if received < expected:
            say(f"warning: broadcast {sent['id']} reached {received} of {expected}")
        last = max(a["last"] for a in got if a["count"]) if received else math.nan
        first = min(a["first"] for a in got if a["count"]) if received else math.nan
        oncpu = on1 - on0
        commit_to_last = last - sent["t1"]
        write = self._server_write(log_offset)
        return {
            "id": sent["id"],
            "received": received,
            "expected": expected,
            "last_ms": commit_to_last * 1000,
            "first_ms": (first - sent["t1"]) * 1000,
            "last_from_insert_ms": (last - sent["t0"]) * 1000,
            "wall_us_per_conn": commit_to_last * 1e6 / n,
            "cpu_us_per_conn": (cpu1 - cpu0) * 1e6 / n,
            "oncpu_us_per_conn": oncpu * 1e6 / n,
            "net_us_per_conn": max(0.0, oncpu - idle_rate * (wall1 - wall0)) * 1e6 / n,
            "server_write": write,
            "server_write_ms": write["ms"] if write else math.nan,
            "server_write_us_per_conn": write["us_per_conn"] if write else math.nan,
            "server_write_cpu_us_per_conn": write["cpu_us_per_conn"] if write else math.nan,
            # the busiest client's CPU over commit -> last: above 0.9 it set the pace
            "client_busy": (
                max(client_cpu.values()) / commit_to_last if commit_to_last > 0 else math.nan
            ),
            "frames": frames,
            "reads": reads,
            "client_cpu_us_per_frame": (
                sum(client_cpu.values()) * 1e6 / frames if frames else math.nan
            ),
            "window_ms": (wall1 - wall0) * 1000,
            "cpu": cpu,
            "cores_busy": report.cores_busy(cpu, CORES),
            "foreign": sum(a["foreign"] for a in got),
            "foreign_examples": [e for a in got for e in a["foreign_examples"]][:5],
            "dropped": report.merge_counts(a["dropped"] for a in got),
            "malformed": sum(a["malformed"] for a in got),
            "malformed_examples": [e for a in got for e in a["malformed_examples"]][:3],
        }

    def _server_write(self, offset: int) -> dict[str, Any] | None:
        """The daemon's own figure for the broadcast's writes: its notifyd.core.fanout log line,
        written right after the last write (so normally before the clients had it all). When
        a first broadcast brings none, the daemon is taken not to log it: no more waiting."""
        wait = 0.0 if self.fanout_logged is False else FANOUT_LOG_WAIT
        deadline = time.monotonic() + wait
        found: list[dict[str, Any]] = []
        while True:
            lines, offset = self.daemon.log_since(offset)
            found += (f for f in map(_fanout_record, lines) if f is not None)
            if found or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if self.fanout_logged is None:
            self.fanout_logged = bool(found)
            if not found:
                say("the daemon logs no fan-out time (notifyd.core.fanout): server write time n/a")
        if not found:
            return None
        # the broadcast's fan-out is to stream `all`; no other stream has 1000 members here
        best = max(found, key=lambda f: (f["stream"] == "all", f["connections"]))
        return {
            **best,
            "us_per_conn": best["ms"] * 1000 / best["connections"],
            "cpu_us_per_conn": best["cpu_ms"] * 1000 / best["connections"],
            "lines": len(found),
        }

    # -- scenario 5: reconnect storm ----------------------------------------------------------

    def storm(self) -> dict[str, Any]:
        """Every connection cut at once (TCP reset); while they are away one notification per
        user and one broadcast are committed; then all reconnect at once, each sending a
        sync-request with its cursors: how long until every one has its sync-response, which
        must bring exactly what it missed."""
        if not self.scale.storm:
            return {}
        users_of = [list(part) for part in self.users_of]
        users = [u for part in users_of for u in part]
        say(f"reconnect storm: cutting {len(users):,} connections")
        for client in self.clients:
            client.send("drop")
        for client in self.clients:
            client.receive(30)
        time.sleep(SETTLE_SECONDS)  # the server has seen the resets
        missed = self.writer.call("missed", users, timeout=120)
        last = missed["last_seq"]
        shared = {stream: last.get(stream, 0) for stream in ("role:user", "all")}
        time.sleep(SETTLE_SECONDS)  # the server has dealt with the NOTIFYs (to no one)
        say(f"reconnect storm: {len(users):,} clients reconnect and sync")
        with self.profiled("storm", 10):
            self.meter.start()
            for client, part in zip(self.clients, users_of, strict=True):
                client.send(
                    "storm",
                    part,
                    {u: {f"user:{u}": last.get(f"user:{u}", 0), **shared} for u in part},
                    {u: [missed["own"][u], missed["broadcast"]] for u in part},
                )
            answers = [c.receive(120 + 0.02 * len(users)) for c in self.clients]
            cpu = self.meter.stop()
        self.new_frames(answers)
        self.daemon.check_alive()
        self.users_of = [
            _opened(part, answer) for part, answer in zip(users_of, answers, strict=True)
        ]
        started = min(a["started_at"] for a in answers)  # after the clients signed tokens
        caught_up = sorted(t - started for a in answers for t in a["times"])
        problems = report.merge_counts(a["problems"] for a in answers)
        failed = sum(a["failed"] for a in answers)
        if failed or problems:
            say(f"warning: reconnect storm: {failed} failed, sync problems {problems}")
        return {
            "clients": len(users),
            "caught_up": len(caught_up),
            "failed": failed,
            "errors": sorted({e for a in answers for e in a["errors"]})[:5],
            "problems": problems,
            "problem_examples": [e for a in answers for e in a["problem_examples"]][:5],
            "all_caught_up_s": caught_up[-1] if caught_up else math.nan,
            "caught_up_s": report.distribution_ms(caught_up),
            "server_cpu_seconds": self.meter.seconds["daemon"],
            "client_cpu_seconds": sum(self.client_cpu().values()),
            "cpu": cpu,
            "saturated": report.saturated(cpu),
        }

    # -- scenario 6: sustained throughput ------------------------------------------------------

    def ramp(self) -> dict[str, Any]:
        """Targeted notifications at rising rates, a step at a time, until p99 passes
        RAMP_P99_MS or something is lost: the highest rate delivered under it, counted as
        committed (the writer may not keep to a step's plan); a step the writer (PostgreSQL)
        or a client process could not keep up with is run again, and if it still cannot, it
        ends the ramp, its figure a lower bound."""
        s = self.scale
        steps: list[dict[str, Any]] = []
        held = 0.0
        stopped_by = "the last step"
        for rate in s.ramp:
            batch = max(1, math.ceil(rate / RAMP_COMMITS))
            for attempt in range(1, RAMP_ATTEMPTS + 1):
                run = self.latency(rate, batch, s.ramp_seconds, raw=None, profile=False)
                c = run["commit_to_client_ms"]
                steps.append(
                    {
                        "rate": rate,
                        "batch": batch,
                        "attempt": attempt,
                        "commit_rate": run["commit_rate"],
                        "sent": run["sent"],
                        "received": run["received"],
                        "missing": run["missing"],
                        "duplicates": run["duplicates"],
                        "misrouted": run["misrouted"],
                        "p50": c["p50"],
                        "p99": c["p99"],
                        "max": c["max"],
                        "server_cpu_s_per_1000": run["server_cpu_s_per_1000"],
                        "cpu": run["cpu"],
                        "saturated": run["saturated"],
                        "insert_errors": run["insert_errors"],
                    }
                )
                self._forget_late()
                wrong = bool(
                    run["missing"] or run["duplicates"] or run["misrouted"] or run["insert_errors"]
                )
                behind = run["commit_rate"] < RAMP_KEEP_UP * rate
                if wrong or not (run["saturated"] or (behind and c["p99"] <= RAMP_P99_MS)):
                    break
            if wrong:
                stopped_by = (
                    f"notifications missing after a {DRAIN_TIMEOUT:g} s drain, "
                    "duplicated or misrouted"
                )
                break
            if run["saturated"]:  # whatever p99 was, the clients set the pace
                stopped_by = f"load generator saturated ({', '.join(run['saturated'])})"
                break
            if not c["p99"] <= RAMP_P99_MS:
                stopped_by = f"p99 over {RAMP_P99_MS:g} ms"
                break
            held = max(held, run["commit_rate"])
            if behind:
                stopped_by = (
                    "the writer fell behind its schedule (PostgreSQL on the same "
                    "cores): a lower bound"
                )
                break
        return {
            "p99_limit_ms": RAMP_P99_MS,
            "steps": steps,
            "held": held,
            "stopped_by": stopped_by,
            "load_bound": stopped_by.startswith(("the writer", "load generator")),
        }

    def _forget_late(self) -> None:
        """After a step that fell behind, what still arrives later belongs to no run."""
        time.sleep(SETTLE_SECONDS)
        for client in self.clients:
            client.send("drain", 0, 0.0)
        self.new_frames([c.receive(30) for c in self.clients])

    # -- scenario 7: handshakes --------------------------------------------------------------

    def handshakes(self) -> dict[str, Any]:
        """New connections as fast as the load generator opens them (JWT verified, greeting
        sent), beside the open ones; then closed again."""
        n = self.scale.handshakes
        if not n:
            return {}
        users = [f"h{i}" for i in range(n)]
        parts = [users[i :: len(self.clients)] for i in range(len(self.clients))]
        say(f"handshakes: opening {n:,} new connections")
        self.meter.start()
        for client, part in zip(self.clients, parts, strict=True):
            client.send("connect", part)
        answers = [c.receive(60 + 0.02 * n) for c in self.clients]
        cpu = self.meter.stop()
        server_seconds = self.meter.seconds["daemon"]
        client_seconds = sum(self.client_cpu().values())
        self.new_frames(answers)
        self.close_users(parts)
        self.daemon.check_alive()
        opened = sum(a["opened"] for a in answers)
        seconds = max(a["seconds"] for a in answers)
        return {
            "tried": n,
            "opened": opened,
            "failed": n - opened,
            "errors": sorted({e for a in answers for e in a["errors"]})[:5],
            "seconds": seconds,
            "per_second": opened / seconds if seconds else math.nan,
            "server_cpu_us_per_handshake": server_seconds * 1e6 / opened if opened else math.nan,
            "client_cpu_us_per_handshake": client_seconds * 1e6 / opened if opened else math.nan,
            "cpu": cpu,
            "saturated": report.saturated(cpu),
        }

    # -- scenario 4 ---------------------------------------------------------------------

    def most_connections(self) -> dict[str, Any]:
        """More idle connections, a step at a time, up to scale.most: how many one process
        holds, and its RSS per connection there (from the same RSS with none open)."""
        s = self.scale
        if not s.most:
            return {}
        live = self.live()
        levels: list[dict[str, Any]] = []
        next_user = s.idle_levels[-1]
        while live < s.most:
            step = min(s.most_step, s.most - live)
            say(f"most connections: opening {step:,} more (now {live:,})")
            try:
                opened = self.connect([f"u{i}" for i in range(next_user, next_user + step)])
            except BenchError as exc:
                say(f"most connections: stopped: {exc}")
                levels.append({"error": str(exc)[:300]})
                break
            next_user += step
            time.sleep(SETTLE_SECONDS)
            self.daemon.check_alive()
            live = self.live()
            levels.append({"live": live, "rss_kb": self.daemon.rss_kb(), **opened})
            if opened["failed"]:
                break
        held = [lv for lv in levels if "live" in lv]
        top = held[-1] if held else {"live": live, "rss_kb": self.daemon.rss_kb()}
        out = {
            "target": s.most,
            "levels": levels,
            "held": top["live"],
            "rss_kb": top["rss_kb"],
            "fd_limit": infra.fd_limit_of(self.daemon.pid),
        }
        # back to the idle level's connections for the scenarios that follow
        extra = {f"u{i}" for i in range(s.idle_levels[-1], next_user)}
        self.close_users([[u for u in part if u in extra] for part in self.users_of])
        self.users_of = [[u for u in part if u not in extra] for part in self.users_of]
        return out

    def final_stats(self) -> dict[str, Any]:
        """The clients' counters at the end: what the server did to them over every
        scenario (connections it closed, frames of another user's stream, malformed ones)."""
        answers = [c.call("stats", timeout=30) for c in self.clients]
        return {
            "dropped": report.merge_counts(a["dropped"] for a in answers),
            "foreign": sum(a["foreign"] for a in answers),
            "foreign_examples": [e for a in answers for e in a["foreign_examples"]][:5],
            "malformed": sum(a["malformed"] for a in answers),
            "malformed_examples": [e for a in answers for e in a["malformed_examples"]][:3],
        }

    def close_users(self, parts: list[list[str]]) -> None:
        """Close these users' connections, a part per client process; what has not closed
        within HANDSHAKES_CLOSE_TIMEOUT is aborted (not measured)."""
        for client, part in zip(self.clients, parts, strict=True):
            client.send("close", part, HANDSHAKES_CLOSE_TIMEOUT)
        for client in self.clients:
            client.receive(60)

    def close_all(self) -> None:
        for client in self.clients:
            client.send("close")
        for client in self.clients:
            client.receive(60)


def _opened(part: list[str], answer: dict[str, Any]) -> list[str]:
    """The users of `part` whose connections a client process's connect answer says are open
    (live_users is sent only when some failed)."""
    if not answer["failed"]:
        return part
    live = set(answer["live_users"])
    return [u for u in part if u in live]


def _fanout_record(line: str) -> dict[str, Any] | None:
    """A notifyd.core.fanout log line's figures: connections, ms, and stream and seq if given."""
    if not any(name in line for name in FANOUT_LOGGERS):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("logger") not in FANOUT_LOGGERS:
        return None
    msg = str(record.get("msg", ""))
    m = FANOUT_MSG.search(msg)
    if m is None:
        return None
    where = FANOUT_STREAM.search(msg, m.end())
    return {
        "connections": int(m[1]),
        "ms": float(m[2]),
        "cpu_ms": float(m[3]) if m[3] else math.nan,
        "msg": msg,
        "stream": where[1] if where else None,
        "seq": int(where[2]) if where else None,
    }


# -- orchestration ------------------------------------------------------------------------------


def run(args: argparse.Namespace, scale: Scale, fd_limit: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "cpus": CORES,
            "python": platform.python_version(),
            "websockets": version("websockets"),
            "git_head": infra.git_head(),
            "postgres_source": infra.postgres_source(),
            "fd_limit": fd_limit,
            "client_processes": CLIENT_PROCESSES,
            "scale": asdict(scale),
            "profiled": args.profile,
            "daemon_log_level": DAEMON_LOG_LEVEL,
        },
        "targets": {key: asdict(target) for key, target in report.TARGETS.items()},
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="notifyd-bench-"))
        stack.callback(shutil.rmtree, workdir, True)
        dsn = stack.enter_context(infra.bench_database())
        infra.migrate(dsn)
        secret = secrets.token_urlsafe(48)
        daemon = Daemon(dsn, secret, workdir, log_level=DAEMON_LOG_LEVEL)
        stack.callback(daemon.stop)
        say(f"notifyd serve started (pid {daemon.pid}, port {daemon.port})")
        clients: list[Worker] = []
        for i in range(CLIENT_PROCESSES):
            client = Worker(
                f"client-{i}",
                ws_clients.main,
                daemon.url,
                secret,
                HANDSHAKES_IN_FLIGHT // CLIENT_PROCESSES,
            )
            stack.callback(client.stop)
            clients.append(client)
        writer = Worker("writer", sql_writer.main, dsn, WRITER_POOL)
        stack.callback(writer.stop)
        daemon.wait_ready()
        results["meta"]["postgres"] = writer.call("open", timeout=60)["server_version"]

        bench = Bench(
            daemon,
            clients,
            writer,
            scale,
            HERE / "results" if args.profile else None,
            args.profile == "native",
        )
        _scenarios(bench, results)
        results["profiles"] = bench.profiles
        results["raw"] = {"notifyd": bench.raw}
        bench.close_all()
        results["daemon_warnings"] = daemon.warnings(50)
        results["meta"]["daemon_peak_rss_kb"] = infra.status_kb(daemon.pid, "VmHWM")
        for client in clients:
            client.stop()
        daemon.stop()
        if args.baseline:
            # before and after in one run: notifyd at another commit, same load and machine
            name = f"notifyd@{args.baseline}"
            results["peers"] = {}
            results["peers"][name], results["raw"][name] = run_baseline(
                args.baseline,
                dsn,
                secret,
                workdir,
                scale,
                results["profiles"],
                HERE / "results" if args.profile else None,
                args.profile == "native",
            )
        say("floors: bare send() to as many loopback connections; commit -> bare LISTEN")
        users = [f"u{i}" for i in range(scale.connections)]
        try:
            results["floor"] = {
                "send": floor.send_floor(scale.connections, rounds=3 if args.quick else 5),
                "notify": floor.notify_floor(
                    dsn,
                    writer,
                    scale.latency_rate,
                    scale.latency_seconds,
                    users,
                    windows=scale.latency_windows,
                ),
                "notify_fast": floor.notify_floor(
                    dsn,
                    writer,
                    scale.fast_rate,
                    scale.latency_seconds,
                    users,
                    scale.fast_batch,
                    scale.latency_windows,
                ),
            }
        except (BenchError, OSError) as exc:  # the servers' figures stand without it
            say(f"floors not measured: {exc!r}")
            results["floor_error"] = repr(exc)[:500]
        # The same scenarios, load and database against each peer, one server at a time.
        results.setdefault("peers", {})
        for name in args.peers:
            results["peers"][name], results["raw"][name] = run_peer(
                peers.PEERS[name], dsn, secret, workdir, writer, scale
            )
    return results


# Each scenario after the idle memory reading (which opens the connections the others use), in
# the order they run; --only names some of them.
STEPS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "latency": lambda bench: bench.latency_windows(),
    "latency_fast": lambda bench: bench.latency_windows(
        bench.scale.fast_rate, bench.scale.fast_batch, raw="latency_fast"
    ),
    "fanout": lambda bench: bench.fanout(),
    "most_connections": lambda bench: bench.most_connections(),
    "storm": lambda bench: bench.storm(),
    "ramp": lambda bench: bench.ramp(),
    "handshakes": lambda bench: bench.handshakes(),
}
SCENARIOS = tuple(STEPS)


def _scenarios(bench: Bench, out: dict[str, Any]) -> None:
    """Every scenario in order on one server (or those of --only), each result stored as soon
    as it is known (a peer that breaks down keeps what it had done). The idle memory reading
    always runs: it opens the connections the others use."""
    only = bench.scale.only
    out["idle_memory"] = bench.idle_memory()
    for name, step in STEPS.items():
        out[name] = step(bench) if not only or name in only else {}
    out["clients_final"] = bench.final_stats()


def run_peer(
    kind: peers.PeerKind, dsn: str, secret: str, workdir: Path, writer: Worker, scale: Scale
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The peer's results, and its raw per-notification times. A peer that breaks down (it
    dies, or stops answering) ends its own part of the run, not the run: its results say
    where it stopped."""
    versions = peers.install(kind.name)
    out: dict[str, Any] = {"title": kind.title, "versions": versions}
    raw: dict[str, Any] = {}
    try:
        _run_peer(kind, dsn, secret, workdir, writer, scale, out, raw)
    except BenchError as exc:
        say(f"{kind.title} stopped: {exc}")
        out["error"] = str(exc)[:1000]
    return out, raw


def _run_peer(
    kind: peers.PeerKind,
    dsn: str,
    secret: str,
    workdir: Path,
    writer: Worker,
    scale: Scale,
    out: dict[str, Any],
    raw: dict[str, Any],
) -> None:
    with contextlib.ExitStack() as stack:
        server = peers.Peer(kind, dsn, secret, workdir)
        stack.callback(server.stop)
        say(f"{kind.title} started (pid {server.pid}, port {server.port}): {out['versions']}")
        _measure(stack, server, writer, secret, scale, out, raw, kind.protocol)


def _measure(
    stack: contextlib.ExitStack,
    server: Daemon,
    writer: Worker,
    secret: str,
    scale: Scale,
    out: dict[str, Any],
    raw: dict[str, Any],
    protocol: str = "notifyd",
    profile: tuple[Path | None, bool, str] = (None, False, ""),
) -> Bench:
    """Every scenario against a started server (a peer, or notifyd at another commit), with
    clients of its own; its results and warnings into `out`, per-sample data into `raw`."""
    clients = []
    for i in range(CLIENT_PROCESSES):
        client = Worker(
            f"client-{i}",
            ws_clients.main,
            server.url,
            secret,
            HANDSHAKES_IN_FLIGHT // CLIENT_PROCESSES,
            protocol,
        )
        stack.callback(client.stop)
        clients.append(client)
    server.wait_ready()
    bench = Bench(server, clients, writer, scale, *profile)
    bench.raw = raw
    try:
        _scenarios(bench, out)
        bench.close_all()
    finally:
        out["warnings"] = server.warnings(20)
        out["peak_rss_kb"] = infra.status_kb(server.pid, "VmHWM")
    return bench


def run_baseline(
    rev: str,
    dsn: str,
    secret: str,
    workdir: Path,
    scale: Scale,
    profiles: dict[str, dict[str, Any]],
    profile_dir: Path | None = None,
    profile_native: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """notifyd at commit `rev` (exported under `workdir`, run from there with this Python and
    its packages) on a database of its own migrated by that version, with a writer of its own:
    every scenario, reported like a peer's; profiled as this tree's is (into `profiles`, each
    name with `@rev`) when `profile_dir` is given."""
    tree = workdir / "baseline"
    commit = infra.export_tree(rev, tree)
    out: dict[str, Any] = {"title": f"notifyd at {rev}", "versions": {"commit": commit[:12]}}
    raw: dict[str, Any] = {}
    env = {"PYTHONPATH": str(tree)}
    try:
        with contextlib.ExitStack() as stack:
            base_dsn = stack.enter_context(infra.sibling_database(dsn, "baseline"))
            infra.migrate(base_dsn, **env)
            daemon = Daemon(
                base_dsn,
                secret,
                workdir,
                log_level=DAEMON_LOG_LEVEL,
                shared_log=workdir / "baseline.log",
                PYTHONPATH=str(tree),
            )
            stack.callback(daemon.stop)
            say(f"notifyd at {commit[:10]} started (pid {daemon.pid}, port {daemon.port})")
            writer = Worker("writer-baseline", sql_writer.main, base_dsn, WRITER_POOL)
            stack.callback(writer.stop)
            writer.call("open", timeout=60)
            bench = _measure(
                stack,
                daemon,
                writer,
                secret,
                scale,
                out,
                raw,
                profile=(profile_dir, profile_native, f"@{rev}"),
            )
            profiles.update(bench.profiles)
    except BenchError as exc:
        say(f"notifyd at {commit[:10]} stopped: {exc}")
        out["error"] = str(exc)[:1000]
    return out, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down smoke run (CI)")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="python",
        choices=("python", "native"),
        help="sample the daemon with py-spy in scenarios 2, 3 and 5: Python "
        "frames without pausing it (default), or native frames too, "
        "which pauses it for each sample (perturbs the figures more)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "results" / "latest.json",
        help="JSON results (default bench/results/latest.json)",
    )
    parser.add_argument(
        "--peers",
        default=",".join(peers.PEERS),
        help="comma-separated peers to measure after notifyd (default: "
        f"{','.join(peers.PEERS)}; '' for none)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure notifyd at this git commit (or tag, branch), right "
        "after this tree's notifyd, on a database of its own: before and "
        "after, side by side",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run, the idle memory reading always (it opens "
        f"the connections): {','.join(SCENARIOS)}",
    )
    args = parser.parse_args(argv)
    only = tuple(s for s in args.only.split(",") if s)
    if set(only) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(set(only) - set(SCENARIOS))}")
    args.peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in args.peers if p not in peers.PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {', '.join(peers.PEERS)}")
    scale = replace(QUICK if args.quick else FULL, only=only)

    fd_limit = infra.raise_fd_limit()
    needed = max(scale.connections, scale.most) + 100  # the server: its own files too
    if fd_limit < needed:
        say(f"the open-file limit is {fd_limit}; {needed} are needed (ulimit -Hn)")
        return 2
    # Interruptible even when started in the background (where SIGINT may come ignored).

    started = time.monotonic()
    results = infra.guarded(lambda: run(args, scale, fd_limit))
    if isinstance(results, int):
        return results
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["problems"] = report.problems(results)
    raw = results.pop("raw")
    report.write_json(results, args.output)
    report.write_json(raw, args.output.with_suffix(".raw.json"), indent=None)  # git-ignored
    try:
        for path in plots.render(results, raw, args.output.parent):
            say(f"plot: {path}")
    except Exception as exc:  # the figures are written already; a plot is not worth them
        say(f"plots not drawn: {exc!r}")
    print(report.summary(results))
    table = report.side_by_side(results)
    if table:
        peers_md = args.output.with_name(args.output.stem + "-peers.md")
        peers_md.write_text(table)
        print()
        print(table)
        print(f"(side by side in {peers_md})")
    for name, profile in results["profiles"].items():
        print()
        print(spy.render(name, profile))
    print(f"\n({results['meta']['seconds']:.0f} s; results in {args.output})")
    if results["problems"]:  # something broke; a figure off its target is no failure
        say(f"FAILED: {'; '.join(results['problems'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
