"""The timer's decision for a due connection (core.keepalive), from its numbers alone."""

from __future__ import annotations

from typing import Any

from notifyd.core.keepalive import Act, Decision, decide

INTERVAL, TIMEOUT = 20.0, 10.0


def due(**kw: Any) -> Decision:
    numbers: dict[str, Any] = {
        "now": 100.0,
        "wall": 1_000_000.0,
        "deadline": 100.0,
        "expires_at": 1_003_600.0,
        "websocket_open": True,
        "last_recv": 95.0,
        "ping_sent": 0.0,
        "ping_interval": INTERVAL,
        "ping_timeout": TIMEOUT,
    }
    numbers.update(kw)
    return decide(**numbers)


def test_awaiting_auth_waits_for_its_deadline_then_closes_or_aborts() -> None:
    assert due(expires_at=None, deadline=105.0) == Decision(Act.WAIT, 105.0)
    assert due(expires_at=None) == Decision(Act.CLOSE, code=4001, reason="authentication timeout")
    assert due(expires_at=None, websocket_open=False) == Decision(Act.ABORT)


def test_an_expired_token_closes_with_4001() -> None:
    assert due(expires_at=1_000_000.0) == Decision(Act.CLOSE, code=4001, reason="token expired")


def test_idle_connections_get_a_ping_and_are_closed_without_a_pong() -> None:
    assert due(last_recv=95.0) == Decision(Act.WAIT, 95.0 + INTERVAL)  # heard of lately
    assert due(last_recv=80.0) == Decision(Act.PING, 100.0 + TIMEOUT)  # idle: ping now
    assert due(last_recv=80.0, ping_sent=95.0) == Decision(Act.WAIT, 95.0 + TIMEOUT)
    assert due(last_recv=80.0, ping_sent=90.0) == Decision(
        Act.CLOSE, code=1011, reason="keepalive ping timeout"
    )


def test_a_token_expiring_first_is_looked_at_when_it_expires() -> None:
    assert due(expires_at=1_000_003.0) == Decision(Act.WAIT, 103.0)
    assert due(expires_at=1_000_003.0, last_recv=80.0) == Decision(Act.PING, 103.0)
