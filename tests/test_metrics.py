"""The Prometheus exposition of the process's metrics."""

from __future__ import annotations

import re

import pytest

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
