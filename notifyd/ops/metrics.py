"""The process's Prometheus metrics, served at /metrics. One registry per App (several Apps may
share a process in tests). Counters on the hot path are plain integers bumped by the modules
that see the events (a prometheus-client Counter takes a lock per increment) and read at
scrape time, like the gauges of live state.

Imports nothing of notifyd but core.codes, and no asyncio: the edge serves what it renders.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from notifyd.core.codes import AuthReason

CONTENT_TYPE = CONTENT_TYPE_LATEST
# notifyd_auth_failures_total shows each of its labels, counted or not
AUTH_FAILURE_LABELS = tuple(sorted({reason.metric_label for reason in AuthReason}))
# Commit-to-send latency buckets, in seconds: the target is milliseconds, the tail matters.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


# The event loop's lag buckets, in seconds: a healthy loop stays in the first few
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    """A histogram observed once per notification published: a list of counts bumped without
    the lock (and the per-bucket loop) of prometheus-client's Histogram, a tenth of the CPU a
    notification cost at 5,000/s; exposed with the same buckets at scrape time."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # le: a bound holds its equal
        self.sum += seconds

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*(str(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class Metrics(Collector):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # -- bumped where the events happen (read at scrape time by collect()) --
        self.frames_sent = 0
        self.bytes_sent = 0
        self.connections_opened = 0
        self.closes: Tally[str] = Tally()  # close code (1006: the connection was lost)
        self.auth_failures: Tally[str] = Tally()  # expired, revoked or invalid
        self.sync_requests: Tally[str] = Tally()  # websocket or http
        self.slow_consumer_closes = 0
        self.rate_limited = 0
        self.pruned = 0
        self.notify_refused: Tally[str] = Tally()  # NOTIFY payloads dropped, by reason
        # -- read from their owners at scrape time (see watch()) --
        self._live: dict[str, Callable[[], float]] = {}
        self.latency = LatencyHistogram()
        self.loop_lag = LatencyHistogram(LAG_BUCKETS)  # (notifyd.ops.looplag observes it)
        self.redis_up = Gauge(
            "notifyd_presence_redis_up",
            "1 while presence is cluster-wide through Redis, 0 while NOTIFYD_REDIS_URL is set "
            "but Redis is unreachable (presence is then local to this process)",
            registry=r,
        )
        self.redis_errors = Counter(
            "notifyd_presence_redis_errors",
            "Failed Redis calls of the presence cluster",
            registry=r,
        )
        r.register(self)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, RSS, open fds

    def without_redis(self) -> None:
        """No NOTIFYD_REDIS_URL: the Redis metrics would only mislead."""
        self.registry.unregister(self.redis_up)
        self.registry.unregister(self.redis_errors)

    def watch(self, **sources: Callable[[], float]) -> None:
        """Values owned elsewhere, read at each scrape: online_users, delivered, published,
        listener_up, listener_reconnects, notify_stale, reloads."""
        self._live.update(sources)

    def count_sent(self, frames: int, size: int) -> None:
        """The one count of the frames written to clients (notifyd_frames_sent) and their bytes:
        a fan-out adds all of its frames at once, a single frame adds one."""
        self.frames_sent += frames
        self.bytes_sent += size

    def auth_failed(self, reason: AuthReason) -> None:
        self.auth_failures[reason.metric_label] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- Collector ----------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        return []  # unchecked: the names are fixed in collect()

    def collect(self) -> Iterator[Metric]:
        live = self._live

        def owned(source: str) -> float:
            return live[source]() if source in live else 0

        def gauge(name: str, doc: str, source: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=owned(source))

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def tally(
            name: str, doc: str, label: str, counts: Tally[str], always: tuple[str, ...] = ()
        ) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=[label])
            for key in sorted({*always, *counts}):
                family.add_metric([key], counts[key])
            return family

        # every authenticated connection is counted once opened and once closed
        yield GaugeMetricFamily(
            "notifyd_connections",
            "Authenticated WebSocket connections",
            value=self.connections_opened - self.closes.total(),
        )
        yield gauge(
            "notifyd_online_users", "Users with at least one device on this process", "online_users"
        )
        yield gauge(
            "notifyd_listen_up", "1 while the LISTEN connection is up and caught up", "listener_up"
        )
        yield counter(
            "notifyd_connections_opened",
            "WebSocket connections authenticated",
            self.connections_opened,
        )
        yield tally(
            "notifyd_connections_closed",
            "Authenticated WebSocket connections closed, by close code (1006: lost "
            "without a close; other: a code outside the protocol's)",
            "code",
            self.closes,
        )
        yield counter(
            "notifyd_frames_sent",
            "WebSocket data frames written to clients",
            self.frames_sent,
        )
        yield counter("notifyd_sent_bytes", "Bytes of those frames", self.bytes_sent)
        yield counter(
            "notifyd_notifications_received",
            "Notifications heard on the LISTEN connection (or caught up) that had "
            "at least one local recipient",
            owned("published"),
        )
        yield counter(
            "notifyd_notifications_delivered",
            "notification:new frames written, one per recipient connection",
            owned("delivered"),
        )
        yield tally(
            "notifyd_sync_requests",
            "Sync requests (websocket) and polls (http)",
            "via",
            self.sync_requests,
            ("http", "websocket"),
        )
        yield counter(
            "notifyd_slow_consumer_closes",
            "Connections closed with 4008 because their send buffer overflowed",
            self.slow_consumer_closes,
        )
        yield counter(
            "notifyd_rate_limited", "Client frames refused by the rate limit", self.rate_limited
        )
        yield tally(
            "notifyd_auth_failures",
            "Refused tokens, by reason",
            "reason",
            self.auth_failures,
            AUTH_FAILURE_LABELS,
        )
        yield counter(
            "notifyd_listener_reconnects",
            "Times the LISTEN connection was lost or a reconnect attempt failed",
            owned("listener_reconnects"),
        )
        yield tally(
            "notifyd_notify_payloads_refused",
            "NOTIFY payloads dropped unread, by reason: malformed, unknown-key (signed "
            "with a key this process does not hold), signature (forged or modified), "
            "replayed (a payload already seen)",
            "reason",
            self.notify_refused,
        )
        yield counter(
            "notifyd_notify_payloads_stale",
            "Signed NOTIFY payloads numbered before this LISTEN connection or the "
            "replay window, whose events were checked against the tables instead",
            owned("notify_stale"),
        )
        yield counter(
            "notifyd_pruned_notifications",
            "Notifications removed by retention (NOTIFYD_RETENTION_DAYS) by this process",
            self.pruned,
        )
        yield counter("notifyd_config_reloads", "Successful SIGHUP reloads", owned("reloads"))
        yield self.loop_lag.family(
            "notifyd_event_loop_lag_seconds",
            "How late the event loop woke a timer set every 50 ms: what everything on the loop "
            "waited too (up to about 1 ms is the timers' resolution)",
        )
        yield self.latency.family(
            "notifyd_delivery_latency_seconds",
            "From the end of the inserting statement in PostgreSQL to the notification written "
            "to the last local recipient's socket, for live deliveries (not catch-up after a "
            "lost LISTEN connection); the clocks of both hosts must agree",
        )
