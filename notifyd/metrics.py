# The process's Prometheus metrics, served at /metrics. One registry per App (several Apps may
# share a process in tests); gauges of live state are read at scrape time, counters are bumped
# by the modules that see the events. Imports nothing of notifyd.
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("notifyd_connections", "Open WebSocket connections",
                                 registry=r)
        self.online_users = Gauge("notifyd_online_users",
                                  "Users with at least one device on this process", registry=r)
        self.redis_up = Gauge(
            "notifyd_presence_redis_up",
            "1 while presence is cluster-wide through Redis, 0 while NOTIFYD_REDIS_URL is set "
            "but Redis is unreachable (presence is then local to this process)", registry=r)
        self.redis_errors = Counter("notifyd_presence_redis_errors",
                                    "Failed Redis calls of the presence cluster", registry=r)

    def without_redis(self) -> None:
        """No NOTIFYD_REDIS_URL: the Redis metrics would only mislead."""
        self.registry.unregister(self.redis_up)
        self.registry.unregister(self.redis_errors)

    def watch(self, connections: Callable[[], int], online_users: Callable[[], int]) -> None:
        self.connections.set_function(connections)
        self.online_users.set_function(online_users)

    def render(self) -> bytes:
        return generate_latest(self.registry)
