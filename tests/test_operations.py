# Operations: the sd_notify protocol of a real `notifyd serve` (READY, WATCHDOG, RELOADING,
# STOPPING), SIGHUP reloads, /readyz and the admin listener, the metrics an operator watches,
# log lines without secrets, and the schema check at start.
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from faults_support import ServeProcess, eventually, http_get
from support import (
    SECRET,
    Client,
    admin_exec,
    free_port,
    notifyd_cmd,
    running_daemon,
    subprocess_env,
    with_database,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from notifyd.core.auth import issue_token
from notifyd.ops.systemd import SystemdNotifier
from notifyd.storage.migrate import migrate, migrations, sql_dir

NEW_SECRET = "rotated-secret-" + "y" * 40


class NotifySocket:
    """What systemd's side of $NOTIFY_SOCKET sees: each datagram as a dict of its fields."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    async def next(self, key: str, timeout: float = 20) -> dict[str, str]:
        """The next message carrying `key` (earlier ones without it are kept, not returned)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(self.sock, 4096)
                fields = dict(line.split("=", 1) for line in data.decode().splitlines())
                self.messages.append((time.monotonic(), fields))
                if key in fields:
                    return fields

    def close(self) -> None:
        self.sock.close()


async def client_of(url: str, token: str) -> Client:
    client = Client(await connect(f"{url}?token={token}", ping_interval=None, compression=None))
    await client.expect("connection-confirmed")
    await client.expect("notification:unread-count")
    return client


def log_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


# -- sd_notify ----------------------------------------------------------------------------------


async def test_sd_notify_ready_only_when_serving_then_watchdog_reload_and_stopping(
    fresh_db: str, tmp_path: Path
) -> None:
    systemd = NotifySocket(tmp_path / "notify")
    port = free_port()
    # WATCHDOG_USEC as systemd sets it for WatchdogSec=0.4s: a WATCHDOG=1 every 0.2 s.
    node = ServeProcess(
        fresh_db, port, tmp_path, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000"
    )
    try:
        starting = asyncio.ensure_future(node.start())
        ready = await systemd.next("READY")
        # READY=1 comes only once it listens and the LISTEN connection is up: /readyz agrees
        # at that very moment.
        assert ready["READY"] == "1" and ready["STATUS"] == f"serving on 127.0.0.1:{port}"
        assert await http_get(port, "/readyz") == (200, b"ready\n")
        await starting
        beats = [await systemd.next("WATCHDOG") for _ in range(4)]
        assert all(
            b["WATCHDOG"] == "1" and b["STATUS"].startswith("0 connections; LISTEN up")
            for b in beats
        )
        times = [t for t, m in systemd.messages if "WATCHDOG" in m]
        assert max(b - a for a, b in itertools.pairwise(times)) < 0.4 * 2

        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        reloading = await systemd.next("RELOADING")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert (await systemd.next("READY"))["READY"] == "1"

        node.proc.send_signal(signal.SIGTERM)
        assert (await systemd.next("STOPPING"))["STOPPING"] == "1"
        assert await asyncio.to_thread(node.proc.wait, 15) == 0
    finally:
        node.stop()
        systemd.close()


def test_notifier_abstract_socket_watchdog_pid_and_no_socket(tmp_path: Path) -> None:
    name = f"notifyd-test-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        assert notifier.enabled and notifier.watchdog_seconds == 2.0
        assert notifier.stopping()
        assert listener.recv(100) == b"STOPPING=1\nSTATUS=shutting down"
        notifier.close()
    finally:
        listener.close()
    # The watchdog is another process's (WATCHDOG_PID), or there is no systemd at all.
    assert (
        SystemdNotifier(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
        ).watchdog_seconds
        is None
    )
    quiet = SystemdNotifier({})
    assert not quiet.enabled and not quiet.ready("x")
    # A socket that is gone: logged, never raised.
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not gone.ready("x")
    gone.close()


# -- SIGHUP -------------------------------------------------------------------------------------


async def test_sighup_rotates_the_key_and_limits_without_dropping_connections(
    fresh_db: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "jwt_secret"
    secret_file.write_text(SECRET)
    settings_file = tmp_path / "notifyd.toml"
    settings_file.write_text(f'jwt_secret_file = "{secret_file}"\nlog_level = "INFO"\n')
    port = free_port()
    node = ServeProcess(
        fresh_db, port, tmp_path, NOTIFYD_JWT_SECRET="", NOTIFYD_CONFIG=str(settings_file)
    )
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        await node.start()
        assert node.proc is not None
        old = await client_of(url, issue_token(SECRET, "h1"))

        # Rotate the secret, tighten the rate limit, quieten the log, and change the presence
        # TTL (which needs a restart: it must be kept, with a warning).
        secret_file.write_text(NEW_SECRET)
        settings_file.write_text(
            f'jwt_secret_file = "{secret_file}"\nlog_level = "WARNING"\n'
            "rate_limit = 1\nrate_burst = 3\npresence_ttl = 5\n"
        )
        node.proc.send_signal(signal.SIGHUP)
        await eventually(
            lambda: "configuration reloaded" in node.log_path.read_text(),
            10,
            "the reload is logged",
        )
        reloaded = next(x for x in log_lines(node.log_path) if x["msg"] == "configuration reloaded")
        assert sorted(reloaded["changed"]) == [  # type: ignore[call-overload]
            "jwt_secret",
            "log_level",
            "rate_burst",
            "rate_limit",
        ]
        assert any(
            x["msg"] == "NOTIFYD_PRESENCE_TTL changed but only takes effect after a restart"
            for x in log_lines(node.log_path)
        )

        # The connection made with the old key lives on, and gets its notifications.
        await old.send("ping", {})
        await old.expect("pong")
        pool = await asyncpg.connect(fresh_db)
        try:
            await pool.execute("SELECT notifyd.notify('h1', 't', 'after reload', 'm')")
            assert (await old.next_data("notification:new"))["notification"][
                "title"
            ] == "after reload"
            assert (await old.next_data("notification:unread-count"))["count"] == 1
            # The new limits apply to it: a burst of 3 (the ping above took one), then a refusal.
            for _ in range(3):
                await old.send("ping", {})
            kinds = [f["type"] for f in await old.quiet(0.5)]
            assert kinds == ["pong", "pong", "error"]
            # New handshakes need the new key.
            try:
                await connect(f"{url}?token={issue_token(SECRET, 'h2')}")
                raise AssertionError("a token signed with the old secret was accepted")
            except InvalidStatus as exc:
                assert exc.response.status_code == 401
            fresh = await client_of(url, issue_token(NEW_SECRET, "h2"))
            # log_level WARNING: no connection lines any more
            assert not any(
                x["msg"] == "connection open" and x.get("user") == "h2"
                for x in log_lines(node.log_path)
            )

            # A bad file is refused as a whole; the running configuration stays.
            settings_file.write_text(f'jwt_secret_file = "{secret_file}"\nrate_limit = "x"\n')
            node.proc.send_signal(signal.SIGHUP)
            await eventually(
                lambda: "reload refused" in node.log_path.read_text(), 10, "the refusal is logged"
            )
            refusal = [x for x in log_lines(node.log_path) if "reload refused" in str(x["msg"])]
            assert "NOTIFYD_RATE_LIMIT" in str(refusal[0]["msg"])
            settings_file.write_text(f'jwt_secret_file = "{secret_file}"\n')
            secret_file.write_bytes(b"\xff\xfe not text")
            node.proc.send_signal(signal.SIGHUP)
            await eventually(
                lambda: "not UTF-8" in node.log_path.read_text(), 10, "the second refusal is logged"
            )
            await fresh.send("ping", {})
            await fresh.expect("pong")
            status, body = await http_get(port, "/metrics")
            assert status == 200 and b"notifyd_config_reloads_total 1.0" in body
        finally:
            await pool.close()
    finally:
        node.stop()


# -- HTTP: readiness, the admin listener, metrics -------------------------------------------------


async def test_readyz_says_which_check_fails_when_the_database_refuses_connections(
    pg_server: str, fresh_db: str
) -> None:
    name = urlsplit(fresh_db).path.lstrip("/")
    async with running_daemon(fresh_db) as d:
        assert await http_get(d.app.port, "/readyz") == (200, b"ready\n")
        listener_pid = d.app.listener.backend_pid
        await admin_exec(pg_server, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            # The pool's connections go; the LISTEN connection stays up.
            await admin_exec(
                pg_server,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> {listener_pid}",
            )
            status, body = await http_get(d.app.port, "/readyz")
            assert (status, body) == (503, b"not ready: database down\n")
            assert d.app.listener.up
            assert await http_get(d.app.port, "/healthz") == (200, b"ok\n")
        finally:
            await admin_exec(pg_server, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        assert await http_get(d.app.port, "/readyz") == (200, b"ready\n")


async def test_admin_listener_serves_health_and_metrics_of_this_process_only(fresh_db: str) -> None:
    async with running_daemon(fresh_db, admin_port=0) as d:
        admin = d.app.admin_port
        assert admin is not None and admin != d.app.port
        assert (await http_get(admin, "/metrics"))[0] == 200
        assert await http_get(admin, "/readyz") == (200, b"ready\n")
        assert await http_get(admin, "/healthz") == (200, b"ok\n")
        # Not the API, the client or the WebSocket endpoint...
        for path in ("/ws", "/notifyd.js", "/v1/unread-count"):
            assert (await http_get(admin, path))[0] == 404, path
        # ...and the metrics leave the public port.
        assert (await http_get(d.app.port, "/metrics"))[0] == 404
        assert (await http_get(d.app.port, "/healthz"))[0] == 200


def metric(body: bytes, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, body.decode(), re.M)
    assert match is not None, f"{name}{{{labels}}} missing"
    return float(match.group(1))


async def test_metrics_count_what_happened(pg_server: str, fresh_db: str) -> None:
    async with running_daemon(fresh_db, rate_limit=1, rate_burst=3) as d:
        a1 = await d.connect("m1")
        a2 = await d.connect("m1")
        b = await d.connect("m2")
        for i in range(3):
            await d.notify("m1", f"n{i}")
        for client in (a1, a2):
            for _ in range(3):
                await client.expect("notification:new")
        await b.sync({})
        for token in (d.token("m3", ttl=-5), "not-a-token"):
            with contextlib.suppress(InvalidStatus):
                await d.raw(f"?token={token}")
        for _ in range(3):  # the sync took one of the 3: two pongs, one refusal
            await b.send("ping", {})
        assert [f["type"] for f in await b.quiet(0.3)] == ["pong", "pong", "error"]
        await a2.close()
        c = await d.connect("m4")
        await c.ws.close(code=3000)
        await admin_exec(pg_server, f"SELECT pg_terminate_backend({d.app.listener.backend_pid})")
        await eventually(
            lambda: d.app.listener.reconnects == 1 and d.app.listener.up,
            20,
            "the LISTEN connection is back",
        )
        _, body = await http_get(d.app.port, "/metrics")

    assert metric(body, "notifyd_connections") == 2  # a1 and b (the probe itself is not live)
    assert metric(body, "notifyd_online_users") == 2
    assert metric(body, "notifyd_listen_up") == 1
    assert metric(body, "notifyd_connections_opened_total") == 4
    assert metric(body, "notifyd_connections_closed_total", 'code="1000"') == 1
    assert metric(body, "notifyd_connections_closed_total", 'code="other"') == 1
    assert metric(body, "notifyd_notifications_received_total") == 3
    assert metric(body, "notifyd_notifications_delivered_total") == 6  # 3 to each device
    assert metric(body, "notifyd_delivery_latency_seconds_count") == 3
    assert 0 < metric(body, "notifyd_delivery_latency_seconds_sum") < 3
    assert metric(body, "notifyd_delivery_latency_seconds_bucket", 'le="+Inf"') == 3
    assert metric(body, "notifyd_sync_requests_total", 'via="websocket"') == 1
    assert metric(body, "notifyd_sync_requests_total", 'via="http"') == 0
    assert metric(body, "notifyd_auth_failures_total", 'reason="expired"') == 1
    assert metric(body, "notifyd_auth_failures_total", 'reason="invalid"') == 1
    assert metric(body, "notifyd_rate_limited_total") == 1
    assert metric(body, "notifyd_listener_reconnects_total") == 1
    assert metric(body, "notifyd_slow_consumer_closes_total") == 0
    # confirmed + count per connection, 3 notifications to each m1 device, sync, pongs, errors
    assert metric(body, "notifyd_frames_sent_total") >= 2 * 3 + 6 + 1 + 2
    assert metric(body, "notifyd_sent_bytes_total") > metric(body, "notifyd_frames_sent_total")
    assert metric(body, "process_open_fds") > 0


# -- logs -----------------------------------------------------------------------------------------


async def test_logs_never_hold_a_token_a_secret_or_a_password(
    fresh_db: str, tmp_path: Path
) -> None:
    parts = urlsplit(fresh_db)
    password = "pw-" + "z" * 20  # trust authentication ignores it; the log must too
    netloc = (
        parts.netloc.replace("@", f":{password}@", 1)
        if "@" in parts.netloc
        else f"postgres:{password}@{parts.netloc}"
    )
    dsn = urlunsplit(parts._replace(netloc=netloc))
    port = free_port()
    node = ServeProcess(dsn, port, tmp_path, NOTIFYD_LOG_LEVEL="DEBUG")
    url = f"ws://127.0.0.1:{port}/ws"
    good = issue_token(SECRET, "s1")
    expired = issue_token(SECRET, "s1", ttl=-10)
    forged = issue_token("another-secret-" + "q" * 40, "s1")
    try:
        await node.start()
        client = await client_of(url, good)
        await client.send("auth", {"token": forged})  # a refresh with a bad token
        await client.expect("error")
        for bad in (expired, forged, good + "x"):
            with contextlib.suppress(InvalidStatus):
                await connect(f"{url}?token={bad}")
        auth_frame = Client(await connect(url, ping_interval=None))
        await auth_frame.send("auth", {"token": forged})
        await auth_frame.closed()
        for path in (
            f"/v1/unread-count?token={good}",
            f"/v1/notifications?token={forged}",
            f"/nowhere?token={good}",
        ):
            await http_get(port, path)
        await client.close()
        await eventually(
            lambda: '"msg":"connection closed"' in node.log_path.read_text(),
            10,
            "the close is logged",
        )
    finally:
        node.stop()
    text = node.log_path.read_text()
    assert '"level":"debug"' in text or '"level":"info"' in text
    for secret in (good, expired, forged, SECRET, password, good.split(".")[2]):
        assert secret not in text


# -- the schema ----------------------------------------------------------------------------------


async def test_serve_refuses_a_database_whose_schema_is_behind(
    pg_server: str, tmp_path: Path
) -> None:
    old = tmp_path / "sql"
    old.mkdir()
    for path in sorted(sql_dir().glob("000[12]_*.sql")):
        (old / path.name).write_text(path.read_text())
    name = f"notifyd_old_{time.monotonic_ns()}"
    await admin_exec(pg_server, f"CREATE DATABASE {name}")
    try:
        dsn = with_database(pg_server, name)
        env = subprocess_env(
            NOTIFYD_DSN=dsn, NOTIFYD_JWT_SECRET=SECRET, NOTIFYD_PORT=str(free_port())
        )

        async def serve_error() -> str:
            proc = await asyncio.create_subprocess_exec(
                *notifyd_cmd("serve"),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 1
            lines = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
            return str(lines[-1]["msg"])

        # never migrated, then migrated by an older notifyd
        need = migrations()[-1][0]
        assert (
            f"schema is at version 0; this notifyd needs version {need}: run `notifyd "
            "migrate`" in await serve_error()
        )
        await migrate(dsn, old)
        assert (
            f"schema is at version 2; this notifyd needs version {need}: run `notifyd "
            "migrate`" in await serve_error()
        )
        await migrate(dsn)  # the upgrade path: migrate, then start
        assert [v for v in await _versions(dsn)] == [v for v, _, _ in migrations()]
    finally:
        await admin_exec(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [
            r["version"]
            for r in await conn.fetch("SELECT version FROM notifyd.schema_migrations ORDER BY 1")
        ]
    finally:
        await conn.close()
