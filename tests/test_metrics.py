"""The Prometheus exposition of the process's metrics, and the event loop's lag in it."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from support import http_request, running_daemon

from notifyd.core.codes import AuthReason
from notifyd.core.errors import AuthError
from notifyd.ops.metrics import AUTH_FAILURE_LABELS, Metrics


def test_latency_histogram_exposes_prometheus_buckets() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.0007, 0.004, 20.0):  # a bound holds its equal (le)
        metrics.latency.observe(seconds)
    body = metrics.render().decode()

    def value(series: str) -> float:
        found = re.search(rf"^{re.escape(series)} (\S+)$", body, re.MULTILINE)
        assert found, series
        return float(found.group(1))

    name = "notifyd_delivery_latency_seconds"
    assert value(f'{name}_bucket{{le="0.0005"}}') == 1
    assert value(f'{name}_bucket{{le="0.001"}}') == 2
    assert value(f'{name}_bucket{{le="0.002"}}') == 2
    assert value(f'{name}_bucket{{le="0.005"}}') == 3
    assert value(f'{name}_bucket{{le="10.0"}}') == 3
    assert value(f'{name}_bucket{{le="+Inf"}}') == 4
    assert value(f"{name}_count") == 4
    assert value(f"{name}_sum") == pytest.approx(20.0052)


def test_auth_failures_are_counted_by_reason_not_by_message() -> None:
    metrics = Metrics()
    metrics.auth_failed(AuthError(AuthReason.EXPIRED, "this token has expired").reason)
    metrics.auth_failed(AuthReason.REVOKED)
    metrics.auth_failed(AuthReason.SIGNATURE)
    metrics.auth_failed(AuthReason.MALFORMED)
    assert dict(metrics.auth_failures) == {"expired": 1, "revoked": 1, "invalid": 2}
    assert set(AUTH_FAILURE_LABELS) == {r.metric_label for r in AuthReason}  # each one shown


async def test_the_loop_lag_probe_observes_how_late_each_sleep_woke() -> None:
    """A fake clock and sleep: each sleep oversleeps by the next of `late`."""
    from notifyd.ops.looplag import probe_forever

    late = [0.0, 0.003, 0.2, -0.0001]  # (a clock read a hair early: no lag, not negative)
    now = [100.0]
    seen: list[float] = []

    async def sleep(seconds: float) -> None:
        if not late:
            raise asyncio.CancelledError
        now[0] += seconds + late.pop(0)

    with pytest.raises(asyncio.CancelledError):
        await probe_forever(seen.append, 0.05, lambda: now[0], sleep)
    assert seen == pytest.approx([0.0, 0.003, 0.2, 0.0])


async def test_a_blocked_event_loop_shows_in_the_lag_histogram(fresh_db: str) -> None:
    """The daemon's loop (this test's, in process) blocked for 0.3 s: the histogram has a
    sample above 0.25 s, and none was before."""
    async with running_daemon(fresh_db) as d:
        await asyncio.sleep(0.3)  # a few samples of an idle loop

        async def buckets() -> dict[str, float]:
            _, _, body = await http_request(d.app.port, "GET", "/metrics")
            found = re.findall(
                r'^notifyd_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$',
                body.decode(),
                re.MULTILINE,
            )
            return {le: float(count) for le, count in found}

        idle = await buckets()
        assert idle["+Inf"] >= 3 and idle["0.25"] == idle["+Inf"], idle
        time.sleep(0.3)  # blocks the loop the daemon runs on
        await asyncio.sleep(0.1)
        blocked = await buckets()
        assert blocked["+Inf"] - blocked["0.25"] >= 1, blocked
