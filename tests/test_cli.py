# The command line as users run it, in real subprocesses: migrate (also two at once),
# check-config and exit code 2, token, serve end to end with SIGTERM, and `notifyd dev` from
# nothing to a notification pasted into psql arriving at a WebSocket client.
from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
from support import (
    ROOT,
    SECRET,
    Client,
    free_port,
    http_request,
    notifyd_cmd,
    run_cli,
    subprocess_env,
)
from websockets.asyncio.client import connect

from notifyd.core.auth import issue_token


def wait_ready(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("daemon not ready in time")


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a notifyd process a test left running: TERM first (so that `notifyd dev` stops its
    PostgreSQL), then KILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_migrate_is_idempotent_and_safe_when_two_run_at_once(fresh_db: str) -> None:
    env = subprocess_env(NOTIFYD_DSN=fresh_db)
    # fresh_db is cloned from a migrated template: drop the schema to start from nothing
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, asyncpg, sys\n"
            "async def m():\n"
            "    c = await asyncpg.connect(sys.argv[1])\n"
            "    await c.execute('DROP SCHEMA notifyd CASCADE')\n"
            "    await c.close()\n"
            "asyncio.run(m())",
            fresh_db,
        ],
        check=True,
    )
    procs = [
        subprocess.Popen(
            notifyd_cmd("migrate"),
            env=env,
            text=True,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    applied = sorted(out for out, _ in outs)
    assert "up to date" in applied[1] or "applied 0" in applied[0] + applied[1]
    assert "0001_init.sql" in "".join(applied)
    again = run_cli("migrate", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_migrate_reports_an_unreachable_database() -> None:
    env = subprocess_env(NOTIFYD_DSN="postgresql://nobody@127.0.0.1:1/none")
    result = run_cli("migrate", env=env)
    assert result.returncode == 1 and "cannot connect" in result.stderr


def test_check_config_prints_effective_settings_with_secrets_redacted(tmp_path: Path) -> None:
    toml = tmp_path / "notifyd.toml"
    toml.write_text('port = 9001\nhost = "0.0.0.0"\njwt_algorithms = ["HS256"]\n')
    env = subprocess_env(
        NOTIFYD_DSN="postgresql://u:pw@db/app", NOTIFYD_JWT_SECRET=SECRET, NOTIFYD_PORT="9002"
    )
    result = run_cli("--config", str(toml), "check-config", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["port"] == 9002 and shown["host"] == "0.0.0.0"  # the environment wins
    assert shown["jwt_secret"] == "***" and shown["dsn"] == "postgresql://u:***@db/app"
    assert SECRET not in result.stdout and "pw" not in result.stdout


def test_secret_from_a_file_and_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "jwt_secret").write_text(SECRET + "\n")
    for extra in (
        {"NOTIFYD_JWT_SECRET_FILE": str(tmp_path / "jwt_secret")},
        {"CREDENTIALS_DIRECTORY": str(tmp_path)},
    ):
        env = subprocess_env(NOTIFYD_DSN="postgresql://db/app", **extra)
        result = run_cli("token", "--sub", "9", env=env)
        assert result.returncode == 0, result.stderr
        assert jwt.decode(result.stdout.strip(), SECRET, ["HS256"])["sub"] == "9"


def test_dsn_and_redis_url_from_systemd_credentials(tmp_path: Path) -> None:
    """LoadCredential=dsn:... and redis_url:... fill the settings, shown redacted; the
    environment still wins."""
    (tmp_path / "jwt_secret").write_text(SECRET + "\n")
    (tmp_path / "dsn").write_text("postgresql://app:pw-in-credential@db/app\n")
    (tmp_path / "redis_url").write_text("redis://:redispw@cache:6379/0\n")
    env = subprocess_env(CREDENTIALS_DIRECTORY=str(tmp_path))
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["dsn"] == "postgresql://app:***@db/app"
    assert shown["redis_url"] == "redis://:***@cache:6379/0"
    assert shown["jwt_secret_file"] == str(tmp_path / "jwt_secret")
    assert "pw-in-credential" not in result.stdout and "redispw" not in result.stdout
    from notifyd.config import load

    loaded = load(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert loaded.dsn == "postgresql://app:pw-in-credential@db/app"
    assert loaded.redis_url == "redis://:redispw@cache:6379/0"
    assert "pw-in-credential" not in repr(loaded) and SECRET not in repr(loaded)
    assert (
        load(
            environ={"CREDENTIALS_DIRECTORY": str(tmp_path), "NOTIFYD_DSN": "postgresql://env/app"}
        ).dsn
        == "postgresql://env/app"
    )
    (tmp_path / "dsn").write_text("mysql://nope\n")
    result = run_cli("check-config", env=env)
    assert result.returncode == 2 and "NOTIFYD_DSN" in result.stderr


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"NOTIFYD_PORT": "http"}, "NOTIFYD_PORT"),
        ({"NOTIFYD_ADMIN_PORT": "-1"}, "NOTIFYD_ADMIN_PORT"),
        ({"NOTIFYD_RETENTION_DAYS": "-3"}, "NOTIFYD_RETENTION_DAYS"),
        ({"NOTIFYD_PORT": "70000"}, "NOTIFYD_PORT"),
        ({"NOTIFYD_JWT_ALGORITHMS": "none"}, "NOTIFYD_JWT_ALGORITHMS"),
        ({"NOTIFYD_JWT_ALGORITHMS": "HS256,XY1"}, "NOTIFYD_JWT_ALGORITHMS"),
        ({"NOTIFYD_JWT_SECRET": "short"}, "NOTIFYD_JWT_SECRET"),
        ({"NOTIFYD_DSN": ""}, "NOTIFYD_DSN"),
        ({"NOTIFYD_DSN": "mysql://x"}, "NOTIFYD_DSN"),
        ({"NOTIFYD_MAX_FRAME_BYTES": "12"}, "NOTIFYD_MAX_FRAME_BYTES"),
        ({"NOTIFYD_LOG_LEVEL": "LOUD"}, "NOTIFYD_LOG_LEVEL"),
        ({"NOTIFYD_JWT_ALGORITHMS": "RS256"}, "NOTIFYD_JWT_PUBLIC_KEY_FILE"),
        ({"NOTIFYD_JWT_PUBLIC_KEY_FILE": "/nonexistent.pem"}, "NOTIFYD_JWT_PUBLIC_KEY_FILE"),
        ({"NOTIFYD_CONFIG": "/nonexistent.toml"}, "NOTIFYD_CONFIG"),
        ({"NOTIFYD_REUSE_PORT": "maybe"}, "NOTIFYD_REUSE_PORT"),
        ({"NOTIFYD_REDIS_URL": "localhost:6379"}, "NOTIFYD_REDIS_URL"),
        ({"NOTIFYD_PRESENCE_TTL": "0.5"}, "NOTIFYD_PRESENCE_TTL"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_wrong_setting_stops_with_exit_2_and_one_line(
    env: dict[str, str], name: str, command: str
) -> None:
    base = {"NOTIFYD_DSN": "postgresql://127.0.0.1:1/x", "NOTIFYD_JWT_SECRET": SECRET}
    base.update(env)
    result = run_cli(command, env=subprocess_env(**base))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr
    assert SECRET not in result.stderr


def test_unknown_key_in_config_file_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("prot = 1\n")
    result = run_cli(
        "--config",
        str(toml),
        "check-config",
        env=subprocess_env(NOTIFYD_JWT_SECRET=SECRET, NOTIFYD_DSN="postgresql://x/y"),
    )
    assert result.returncode == 2 and "prot" in result.stderr


def test_token_command(tmp_path: Path) -> None:
    env = subprocess_env(NOTIFYD_JWT_SECRET=SECRET)
    result = run_cli(
        "token", "--sub", "42", "--role", "doctor", "--role", "Admin", "--ttl", "60", env=env
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, ["HS256"])
    assert claims["sub"] == "42" and claims["roles"] == ["doctor", "Admin"]
    assert 55 <= claims["exp"] - time.time() <= 61
    assert run_cli("token", "--sub", "1", env=subprocess_env()).returncode == 2


async def test_serve_end_to_end_and_sigterm_closes_with_1001(fresh_db: str) -> None:
    port = free_port()
    env = subprocess_env(
        NOTIFYD_DSN=fresh_db,
        NOTIFYD_JWT_SECRET=SECRET,
        NOTIFYD_PORT=str(port),
        NOTIFYD_SHUTDOWN_TIMEOUT="3",
    )
    proc = subprocess.Popen(
        notifyd_cmd("serve"),
        env=env,
        text=True,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        token = issue_token(SECRET, "s1", ["user"])
        client = Client(await connect(f"ws://127.0.0.1:{port}/ws?token={token}"))
        await client.expect("connection-confirmed")
        await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-c",
                "import asyncio, asyncpg, sys\n"
                "async def m():\n"
                "    c = await asyncpg.connect(sys.argv[1])\n"
                "    await c.execute(\"SELECT notifyd.notify('s1', 't', 'from psql', 'm')\")\n"
                "    await c.close()\n"
                "asyncio.run(m())",
                fresh_db,
            ],
            check=True,
        )
        n = (await client.next_data("notification:new"))["notification"]
        assert n["title"] == "from psql"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, _ = await client.closed(timeout=10)
        assert code == 1001
        rc = await asyncio.to_thread(proc.wait, 10)
        assert rc == 0 and time.monotonic() - started < 5
        logs = proc.stderr.read() if proc.stderr else ""
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        opened = [x for x in lines if x["msg"] == "connection open"]
        closed = [x for x in lines if x["msg"] == "connection closed"]
        assert [(x["user"], x["roles"]) for x in opened] == [("s1", ["user"])]
        assert [(x["user"], x["code"], x["reason"], x["by"]) for x in closed] == [
            ("s1", 1001, "server going away", "server")
        ]
        assert opened[0]["conn"] == closed[0]["conn"] and closed[0]["seconds"] > 0
        assert all(x["ts"].endswith("Z") and x["level"] in ("info", "warning") for x in lines)
        assert token not in logs and SECRET not in logs
    finally:
        stop(proc)


def test_serve_exits_1_when_the_database_is_unreachable() -> None:
    env = subprocess_env(
        NOTIFYD_DSN="postgresql://nobody@127.0.0.1:1/none",
        NOTIFYD_JWT_SECRET=SECRET,
        NOTIFYD_PORT=str(free_port()),
    )
    result = run_cli("serve", env=env)
    assert result.returncode == 1 and "cannot connect" in result.stderr


def spawn_dev(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        notifyd_cmd("dev", "--data-dir", str(tmp_path / "dev"), "--port", str(port)),
        env=subprocess_env(),
        text=True,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def banner_of(proc: subprocess.Popen[str]) -> list[str]:
    """The lines `notifyd dev` printed, up to the end of its banner."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while not any(" tail --url " in line for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
        lines.append(await asyncio.to_thread(proc.stdout.readline))
    return lines


async def test_dev_from_nothing_to_a_pasted_insert_arriving(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "dev"
    proc = spawn_dev(tmp_path, port)
    try:
        lines = await banner_of(proc)
        text = "".join(lines)
        token = re.search(r"^\s+(ey[\w-]+\.[\w-]+\.[\w-]+)\s*$", text, re.M)
        assert token, text
        # the demo page's link carries this run's key, which the dev helpers need
        link = re.search(rf"^Demo page: (http://127\.0\.0\.1:{port}/)#key=([\w-]+)$", text, re.M)
        assert link, text
        for key, status in ((link.group(2), 200), ("", 403), ("guess", 403)):
            got, _, _ = await http_request(
                port, "GET", "/dev/token?user=7", {"X-Notifyd-Dev-Key": key}
            )
            assert got == status, key
        client = Client(await connect(f"ws://127.0.0.1:{port}/ws?token={token.group(1)}"))
        await client.expect("connection-confirmed")
        psql_line = next(line for line in lines if " -c " in line).strip()
        # paste it into a shell, as a person would
        result = await asyncio.to_thread(
            subprocess.run, psql_line, shell=True, text=True, capture_output=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        n = (await client.next_data("notification:new", 10))["notification"]
        assert n["title"] == "Hello" and n["stream"] == "user:42"
        assert shlex.split(psql_line)[0].endswith("psql")
        await client.close()
        # the other commands, as the banner says to run them: a token for user 7 that works
        token_line = next(line for line in lines if " token --sub 7" in line).strip()
        result = await asyncio.to_thread(
            subprocess.run, token_line, shell=True, text=True, capture_output=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        seven = Client(await connect(f"ws://127.0.0.1:{port}/ws?token={result.stdout.strip()}"))
        assert (await seven.expect("connection-confirmed"))["data"]["userId"] == "7"
        await seven.close()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert (data_dir / "pg" / "PG_VERSION").exists() and (data_dir / "jwt-secret").exists()
        assert os.stat(data_dir / "jwt-secret").st_mode & 0o077 == 0
        assert proc.stderr is not None and "Warning" not in proc.stderr.read()
    finally:
        stop(proc)
        shutil.rmtree(data_dir, ignore_errors=True)  # 55 MB of PostgreSQL: not left behind


async def test_dev_stops_with_its_postgresql_when_its_terminal_closes(tmp_path: Path) -> None:
    """Closing the terminal sends SIGHUP: the daemon and its PostgreSQL stop, the port is free,
    and the next `notifyd dev` in the same folder starts."""
    port = free_port()
    pid_file = tmp_path / "dev" / "pg" / "postmaster.pid"
    proc = spawn_dev(tmp_path, port)
    try:
        await banner_of(proc)
        postmaster = int(pid_file.read_text().split()[0])
        proc.send_signal(signal.SIGHUP)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert proc.stderr is not None and "SIGHUP" in proc.stderr.read()
        assert not pid_file.exists()
        assert await gone(postmaster)
        again = spawn_dev(tmp_path, port)  # same port, same folder
        try:
            await banner_of(again)
            again.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(again.wait, 30) == 0
            assert not pid_file.exists()
        finally:
            stop(again)
    finally:
        stop(proc)
        shutil.rmtree(tmp_path / "dev", ignore_errors=True)


async def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process `pid` ends (or is left a zombie) within `timeout` (a postmaster removes
    its pid file just before it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        await asyncio.sleep(0.05)
    return False


def test_dev_on_a_busy_port_says_so_before_starting_postgresql(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            notifyd_cmd("dev", "--data-dir", str(tmp_path / "dev"), "--port", str(port)),
            env=subprocess_env(),
            text=True,
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "another `notifyd dev` may still be running" in result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "dev" / "pg").exists()  # PostgreSQL was not started


def test_token_without_a_secret_says_where_one_comes_from() -> None:
    result = run_cli("token", "--sub", "7", env=subprocess_env())
    assert result.returncode == 2
    assert "NOTIFYD_JWT_SECRET_FILE" in result.stderr and ".notifyd-dev/jwt-secret" in result.stderr
