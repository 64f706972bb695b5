"""The Prometheus exposition of the process's metrics."""

from __future__ import annotations

import re

import pytest

from notifyd.ops.metrics import Metrics


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
