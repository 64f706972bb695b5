"""The one LISTEN connection of a daemon: connect, LISTEN, watch it (termination callback and a
periodic probe), reconnect with backoff and jitter, and after every (re)connect run the catch-up
before declaring itself up. Payloads are verified (notifyd.core.channel) with the keys read here,
at every connect and probe; their typed events go to a callback (notifyd.storage.pipeline).

The only module besides notifyd.storage.store that talks to PostgreSQL (asyncpg); it knows
nothing of connections, frames or the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg

from notifyd.core.backoff import Backoff
from notifyd.core.channel import Channel, Opened

log = logging.getLogger(__name__)

CHANNEL = "notifyd"
REFUSAL_LOG_EVERY = 10.0  # seconds: refused payloads are logged once per burst, then counted
_KEYS = "SELECT id, secret FROM notifyd_private.channel_keys"
_NEW_KEY = "SELECT notifyd_private.new_channel_key()"
# The nonce sequence's position; is_called false: nothing was drawn from it yet
_NONCE = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM notifyd_private.payload_nonce"


class Listener:
    """Keeps a LISTEN connection alive. `up` is True only while listening and caught up."""

    def __init__(
        self,
        dsn: str,
        channel: Channel,
        on_events: Callable[[Opened], None],
        on_connected: Callable[[], Awaitable[int]],
        on_lost: Callable[[], None],
        *,
        probe_interval: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_events = on_events
        self._refusals: Counter[str] = Counter()  # since the last log line
        self._refusals_logged = -REFUSAL_LOG_EVERY
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
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
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
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        first = True
        while True:
            try:
                await self._connect()
                caught_up = await self._on_connected()
                if not first:
                    log.warning("LISTEN connection restored; caught up %d notifications", caught_up)
                first = False
                self._up.set()
                backoff.reset()
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection failed: %s", exc or exc.__class__.__name__)
            self._up.clear()
            self._on_lost()
            await self._close()
            self.reconnects += 1
            delay = backoff.next()
            log.warning("reconnecting the LISTEN connection in %.2fs", delay)
            await asyncio.sleep(delay)

    async def _connect(self) -> None:
        self._lost = asyncio.Event()
        conn = await asyncpg.connect(self._dsn, timeout=10)
        self._conn = conn
        conn.add_termination_listener(lambda _c: self._lost.set())
        await self._read_keys()
        await conn.add_listener(CHANNEL, self._notified)
        # After LISTEN: a payload numbered up to here may have been sent before this process
        # listened, so a copy of it is checked against the tables rather than trusted (see
        # channel); one sent before this read and heard is remembered as seen.
        self._channel.listening_from(await conn.fetchval(_NONCE))
        self.backend_pid = conn.get_server_pid()
        log.info("listening on channel %r (backend pid %s)", CHANNEL, self.backend_pid)

    async def _read_keys(self) -> None:
        """The channel keys, made on first use when there are none (a restore without them)."""
        assert self._conn is not None
        rows = await self._conn.fetch(_KEYS)
        if not rows:
            await self._conn.fetchval(_NEW_KEY)
            rows = await self._conn.fetch(_KEYS)
        self._channel.set_keys({r["id"]: bytes(r["secret"]) for r in rows})

    def _notified(self, _conn: object, pid: int, _channel: str, payload: object) -> None:
        try:
            opened = self._channel.open(str(payload))
        except Exception:  # pragma: no cover - a bug must not let payloads flood the log
            log.exception("checking a NOTIFY payload failed")
            opened = "malformed"
        if isinstance(opened, str):
            self._refused(opened, pid)
            return
        self._on_events(opened)

    def _refused(self, reason: str, pid: int) -> None:
        """Logged once per burst: a flood of forged payloads must not flood the log too."""
        self._refusals[reason] += 1
        now = time.monotonic()
        if now - self._refusals_logged >= REFUSAL_LOG_EVERY:
            log.warning(
                "NOTIFY payloads refused (%s), the last from backend pid %d; the "
                "next are counted for %.0fs (notifyd_notify_payloads_refused_total)",
                ", ".join(f"{n} {r}" for r, n in sorted(self._refusals.items())),
                pid,
                REFUSAL_LOG_EVERY,
            )
            self._refusals.clear()
            self._refusals_logged = now

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
            # the probe re-reads the keys: a new one signs only once every process has it
            async with asyncio.timeout(max(self._probe_interval, 1.0)):
                await self._read_keys()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
