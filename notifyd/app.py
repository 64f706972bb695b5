"""Composition and life cycle of one notifyd process: what is made and wired together, the
start-up order (LISTEN, then bind), reload, readiness and graceful shutdown. What a
connection does is hub.py's; retention is storage/retention.py's."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from notifyd.admission import Admission
from notifyd.cluster import ClusterPresence
from notifyd.config import Settings
from notifyd.core.channel import Channel, Opened
from notifyd.core.codes import CloseCode
from notifyd.core.errors import StoreError
from notifyd.core.fanout import Publisher
from notifyd.core.index import StreamIndex
from notifyd.core.presence import PresencePolicy
from notifyd.core.timers import TimerWheel
from notifyd.edge.http_api import HttpApi
from notifyd.edge.server import Connection, connection_factory, tune_listener
from notifyd.hub import TICK_SECONDS, Hub
from notifyd.operations import Operations
from notifyd.ops import logs, looplag
from notifyd.ops.metrics import Metrics
from notifyd.storage.listener import Listener
from notifyd.storage.pipeline import EventPipeline
from notifyd.storage.retention import Retention
from notifyd.storage.scheduler import Scheduler
from notifyd.storage.store import Store
from notifyd.subscriptions import Subscriptions

log = logging.getLogger(__name__)


class App:
    """One notifyd process."""

    def __init__(
        self, settings: Settings, store: Store, dev: bool = False, dev_key: str | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        # `dev`: the demo page and its token and send helpers (`notifyd dev` only), which need
        # `dev_key` (made when not given: http_api.dev.key)
        self.metrics = Metrics()
        self.index: StreamIndex[Connection] = StreamIndex()
        self.publisher: Publisher[Connection] = Publisher(self.index)
        self.pipeline = EventPipeline(
            self.publisher, store.fetch_ids, store.catch_up, store.fetch_receipts, store.views
        )
        self.presence = ClusterPresence(
            settings, lambda change: self.hub.presence_changed(change), self.metrics
        )
        self.operations = Operations(
            store,
            self.metrics,
            self.presence,
            PresencePolicy(settings.presence_roles, settings.presence_public_roles or ()),
            lambda: self.settings,
        )
        self.http_api = HttpApi(
            settings,
            store,
            self.operations,
            lambda token: self.admission.verify(token),
            self.readiness,
            self.metrics,
            dev,
            dev_key=dev_key,
            port=lambda: self.port,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.admission = Admission(settings, store, self.metrics, self.index, self.spawn)
        self.subscriptions = Subscriptions(
            store, self.index, self.publisher, self.operations.policy, self.spawn
        )
        self.hub = Hub(
            settings,
            self.metrics,
            self.subscriptions,
            self.presence,
            self.http_api,
            self.operations,
            self.admission,
            self.spawn,
        )
        self.connections = self.hub.connections
        self.retention = Retention(store, self.metrics, lambda: self.settings)
        self.scheduler = Scheduler(store)
        self.channel = Channel()
        self.channel.refused = self.metrics.notify_refused
        self.listener = Listener(
            settings.dsn or "", self.channel, self._heard, self._listening, self.pipeline.block
        )
        # A revocation event says only "read the table again": it holds what committed.
        self.publisher.on_revocations = self.admission.revocations_changed
        self._server: asyncio.Server | None = None
        self._admin: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._pruning: asyncio.Task[None] | None = None
        self._scheduling: asyncio.Task[None] | None = None
        self._probing: asyncio.Task[None] | None = None
        self.reloads = 0
        self.port = 0
        self.admin_port: int | None = None
        self.publisher.observe_latency = self.metrics.latency.observe
        self.publisher.count_sent = self.metrics.count_sent
        listener = self.listener
        self.metrics.watch(
            online_users=self.presence.local.online_count,
            delivered=lambda: self.publisher.delivered,
            published=lambda: self.publisher.published,
            listener_up=lambda: float(listener.up),
            listener_reconnects=lambda: listener.reconnects,
            notify_stale=lambda: self.channel.stale,
            reloads=lambda: self.reloads,
        )

    # -- life cycle ---------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """LISTEN first, then bind: nothing committed after a client is accepted is missed."""
        await self.listener.start()
        await self.presence.start()
        loop = asyncio.get_running_loop()
        self.hub.timers = TimerWheel(loop.time(), TICK_SECONDS)
        factory = connection_factory(self.hub, loop.time)
        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=4096)
        else:
            self._server = await loop.create_server(
                factory,
                self.settings.host,
                self.settings.port,
                backlog=4096,
                reuse_address=True,
                reuse_port=self.settings.reuse_port or None,
            )
        for listening in self._server.sockets:
            tune_listener(listening)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.settings.admin_port is not None:
            self._admin = await loop.create_server(
                connection_factory(self.hub, loop.time, admin=True),
                self.settings.admin_host,
                self.settings.admin_port,
                reuse_address=True,
            )
            self.admin_port = self._admin.sockets[0].getsockname()[1]
            log.info(
                "admin listener (health, metrics) on %s:%d",
                self.settings.admin_host,
                self.admin_port,
            )
        self._ticker = loop.create_task(self.hub.tick_forever(), name="notifyd-tick")
        self._pruning = loop.create_task(self.retention.run_forever(), name="notifyd-retention")
        self._scheduling = loop.create_task(self.scheduler.run_forever(), name="notifyd-scheduler")
        self._probing = loop.create_task(
            looplag.probe_forever(self.metrics.loop_lag.observe), name="notifyd-loop-lag"
        )
        log.info("serving on %s:%d", self.settings.host, self.port)

    @property
    def ready(self) -> bool:
        """Listening, and the LISTEN connection is up and caught up (see readiness())."""
        return self._server is not None and self._server.is_serving() and self.listener.up

    async def readiness(self) -> dict[str, bool]:
        """What /readyz checks: the two of `ready`, and that the database answers a query."""
        checks = {
            "listening": self._server is not None and self._server.is_serving(),
            "listen_connection": self.listener.up,
            "database": True,
        }
        try:
            await self.store.ping()
        except StoreError:
            checks["database"] = False
        return checks

    def reload(self, fresh: Settings, changed: list[str]) -> None:
        """SIGHUP: apply reloadable settings (config.reloaded() made `fresh`). Live connections
        stay; new limits apply from their next frame, new keys to the next token verified."""
        self.settings = fresh
        self.http_api.settings = fresh
        self.admission.reload(fresh)
        self.hub.settings = fresh
        self.reloads += 1
        # Logged under the more verbose of the old and new levels, so it is seen either way.
        logs.set_level(min(logging.getLogger().level, logging.getLevelName(fresh.log_level)))
        log.info("configuration reloaded", extra={"changed": changed})
        logs.set_level(fresh.log_level)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, close every connection with 1001, then release the database."""
        limit = timeout if timeout is not None else self.settings.shutdown_timeout
        if self._server is not None:
            self._server.close()
        if self._admin is not None:
            self._admin.close()
        closing = list(self.connections)
        for conn in closing:
            conn.close(CloseCode.GOING_AWAY, "server going away")
        # Give buffered frames (the close frames among them) and the closing handshakes until
        # the deadline (a client that takes nothing is reset sooner: edge.server.CLOSE_GRACE).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline and any(c.transport is not None for c in closing):
            await asyncio.sleep(0.05)
        stuck = [c for c in closing if c.transport is not None]
        if stuck:
            log.warning(
                "%d connections still sending after %.1fs; resetting them", len(stuck), limit
            )
            for conn in stuck:
                conn.reset()
        for background in (self._ticker, self._pruning, self._scheduling, self._probing):
            if background is not None:
                background.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.presence.stop()
        await self.listener.stop()
        await self.store.close()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _listening(self) -> int:
        """The LISTEN connection is (again) up: reload revocations (one may have been missed
        meanwhile), then catch up on notifications."""
        await self.admission.reload_revocations()
        return await self.pipeline.catch_up()

    def _heard(self, opened: Opened) -> None:
        """A verified NOTIFY payload (notifyd.core.channel)."""
        if opened.resync:
            self.spawn(self._resync())
        else:
            self.pipeline.put(opened.events, opened.stale)

    async def _resync(self) -> None:
        """A genuine payload could not be decoded: what it announced is caught up from the
        tables for every stream with local subscribers, as after a lost LISTEN connection."""
        try:
            await self.pipeline.catch_up()
        except StoreError as exc:
            log.warning("catching up after an undecodable payload failed: %s", exc)
            self.pipeline.resume()
