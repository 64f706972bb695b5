"""Processes per host: 1, then 2 `notifyd serve` processes sharing one port with SO_REUSEPORT
(NOTIFYD_REUSE_PORT=1), side by side in one run on one PostgreSQL: how connections spread,
handshakes per second (JWT verified), one announcement to every connection (commit until the
last client has it), and memory. Load generators are separate processes (as in run.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import infra
import report
import sql_writer
import ws_clients
from infra import BenchError, Daemon, Worker, say

HERE = Path(__file__).resolve().parent
CLIENT_PROCESSES = 2
HANDSHAKES_IN_FLIGHT = 200
BROADCASTS = 5


def listening_sockets(port: int) -> int:
    """LISTEN sockets bound to `port` (one per process with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def spread(daemons: list[Daemon], port: int) -> list[int]:
    """Established connections on `port` held by each daemon (from /proc)."""
    established: set[str] = set()  # socket inodes
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    established.add(fields[9])
    out = []
    for d in daemons:
        held = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{d.pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{d.pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in established:
                        held += 1
        out.append(held)
    return out


def measure(processes: int, dsn: str, connections: int, workdir: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(48)
    port = infra.free_port()
    with contextlib.ExitStack() as stack:
        daemons: list[Daemon] = []
        for i in range(processes):
            folder = workdir / f"p{processes}-{i}"
            folder.mkdir()
            d = Daemon(dsn, secret, folder, port=port, NOTIFYD_REUSE_PORT="1")
            stack.callback(d.stop)
            daemons.append(d)
        for d in daemons:
            d.wait_ready()
        deadline = time.monotonic() + 30
        while listening_sockets(port) < processes:
            if time.monotonic() > deadline:
                raise BenchError(f"only {listening_sockets(port)} of {processes} bound")
            time.sleep(0.05)
        idle_rss = sum(d.rss_kb() for d in daemons)
        clients = []
        for i in range(CLIENT_PROCESSES):
            c = Worker(
                f"client-{i}",
                ws_clients.main,
                daemons[0].url,
                secret,
                HANDSHAKES_IN_FLIGHT // CLIENT_PROCESSES,
            )
            stack.callback(c.stop)
            clients.append(c)
        writer = Worker("writer", sql_writer.main, dsn, 2)
        stack.callback(writer.stop)
        writer.call("open", timeout=60)

        users = [f"p{processes}u{i}" for i in range(connections)]
        parts = [users[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
        cpu0 = [infra.cpu_seconds(d.pid) for d in daemons]
        started = time.monotonic()
        for client, part in zip(clients, parts, strict=True):
            client.send("connect", part)
        answers = [c.receive(120 + 0.02 * connections) for c in clients]
        seconds = time.monotonic() - started
        failed = sum(a["failed"] for a in answers)
        handshake_cpu = sum(
            infra.cpu_seconds(d.pid) - c0 for d, c0 in zip(daemons, cpu0, strict=True)
        )
        per_process = spread(daemons, port)
        time.sleep(1.0)
        rss = sum(d.rss_kb() for d in daemons)

        lasts = []
        for _ in range(BROADCASTS):
            sent = writer.call("broadcast", timeout=30)
            for client in clients:
                client.send("await_broadcast", sent["id"], 30.0)
            got = [c.receive(40) for c in clients]
            received = sum(a["count"] for a in got)
            if received < connections - failed:
                raise BenchError(f"broadcast reached {received} of {connections - failed}")
            if sum(a["foreign"] for a in got):
                raise BenchError("a client received another user's notification")
            lasts.append((max(a["last"] for a in got) - sent["t1"]) * 1000)
            time.sleep(0.3)
        for client in clients:
            client.call("close", timeout=60)
        return {
            "processes": processes,
            "connections": connections - failed,
            "failed": failed,
            "per_process": per_process,
            "handshakes_per_s": (connections - failed) / seconds,
            "daemon_cpu_us_per_handshake": handshake_cpu * 1e6 / max(1, connections - failed),
            "announcement_last_ms_median": sorted(lasts)[len(lasts) // 2],
            "announcement_last_ms": lasts,
            "rss_idle_mb": idle_rss / 1024,
            "rss_mb": rss / 1024,
            "kb_per_connection": (rss - idle_rss) / max(1, connections - failed),
        }


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| processes | connections per process | handshakes/s | daemon CPU per handshake "
        "| announcement: commit → last client (median of 5) | RSS all processes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['processes']} | {' / '.join(map(str, r['per_process']))} "
            f"| {r['handshakes_per_s']:,.0f} | {r['daemon_cpu_us_per_handshake']:.0f} µs "
            f"| {r['announcement_last_ms_median']:.0f} ms "
            f"| {r['rss_mb']:.1f} MB ({r['kb_per_connection']:.1f} KB/conn) |"
        )
    return "\n".join(out)


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 connections: a smoke run")
    parser.add_argument("--connections", type=int, default=10_000)
    args = parser.parse_args()
    connections = 1000 if args.quick else args.connections
    infra.raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="notifyd-processes-"))
    try:
        with infra.bench_database() as dsn:
            infra.migrate(dsn)
            rows = []
            for n in (1, 2):
                say(f"{n} process(es), {connections} connections ...")
                rows.append(measure(n, dsn, connections, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say(
        f"{os.cpu_count()} cores shared by the daemons, {CLIENT_PROCESSES} client processes "
        "and the writer"
    )
    print(table(rows))
    result = {"git_head": infra.git_head(), "cores": os.cpu_count(), "rows": rows}
    if not args.quick:
        (HERE / "results").mkdir(exist_ok=True)
        report.write_json(result, HERE / "results" / "processes.json")
    return result


if __name__ == "__main__":
    outcome = infra.guarded(main)
    raise SystemExit(0 if isinstance(outcome, dict) else outcome)
