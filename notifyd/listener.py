# The one LISTEN connection of a daemon: connect, LISTEN, watch it (termination callback and a
# periodic probe), reconnect with backoff and jitter, and after every (re)connect run the
# catch-up before declaring itself up. Payloads go to a callback; routing is not done here.
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger("notifyd.listener")

CHANNEL = "notifyd"


class Listener:
    """Keeps a LISTEN connection alive. `up` is True only while listening and caught up."""

    def __init__(
        self,
        dsn: str,
        on_payload: Callable[[str], None],
        on_connected: Callable[[], Awaitable[int]],
        on_lost: Callable[[], None],
        *,
        probe_interval: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._on_payload = on_payload
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._probe_interval = probe_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._conn: asyncpg.Connection | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self.reconnects = 0
        self.backend_pid: int | None = None

    @property
    def up(self) -> bool:
        return self._up.is_set()

    async def start(self, timeout: float = 30.0) -> None:
        """Start watching; returns once listening for the first time."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="notifyd-listener")
        waiter = asyncio.ensure_future(self._up.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self._task in done:
                self._task.result()
            raise TimeoutError("the LISTEN connection did not come up")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    async def _run(self) -> None:
        delay = self._backoff_initial
        first = True
        while True:
            try:
                await self._connect()
                caught_up = await self._on_connected()
                if not first:
                    log.warning("LISTEN connection restored; caught up %d notifications",
                                caught_up)
                first = False
                self._up.set()
                delay = self._backoff_initial
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection failed: %s", exc or exc.__class__.__name__)
            self._up.clear()
            self._on_lost()
            await self._close()
            self.reconnects += 1
            sleep = delay * (0.5 + random.random())
            log.warning("reconnecting the LISTEN connection in %.2fs", sleep)
            await asyncio.sleep(sleep)
            delay = min(delay * 2, self._backoff_max)

    async def _connect(self) -> None:
        self._lost = asyncio.Event()
        conn = await asyncpg.connect(self._dsn, timeout=10)
        self._conn = conn
        conn.add_termination_listener(lambda _c: self._lost.set())
        await conn.add_listener(CHANNEL, self._notified)
        self.backend_pid = conn.get_server_pid()
        log.info("listening on channel %r (backend pid %s)", CHANNEL, self.backend_pid)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self._on_payload(str(payload))

    async def _watch(self) -> None:
        """Returns when the connection is lost: terminated, or a probe failed."""
        assert self._conn is not None
        while True:
            try:
                # asyncio.timeout: wait_for (3.11) may swallow a cancel racing the event
                async with asyncio.timeout(self._probe_interval):
                    await self._lost.wait()
                raise ConnectionError("LISTEN connection terminated")
            except TimeoutError:
                pass
            if self._conn.is_closed():
                raise ConnectionError("LISTEN connection closed")
            await self._conn.fetchval("SELECT 1", timeout=max(self._probe_interval, 1.0))

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
