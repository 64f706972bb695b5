"""What the single timer does for one connection that is due: the handshake and auth deadline,
token expiry and keepalive pings, as a decision made from the connection's numbers (no clock
read, no I/O). hub.py acts on it. Imports no asyncio, asyncpg, redis or socket."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from notifyd.core.codes import CloseCode


class Act(enum.Enum):
    WAIT = "wait"  # nothing now: look again at `due`
    PING = "ping"  # send a ping now, then look again at `due`
    CLOSE = "close"  # close the WebSocket with `code` and `reason`
    ABORT = "abort"  # drop the connection: it is no open WebSocket (a handshake unfinished)


@dataclass(frozen=True, slots=True)
class Decision:
    act: Act
    due: float | None = None  # when to look again (WAIT, PING)
    code: int = 0  # CLOSE
    reason: str = ""  # CLOSE


def decide(
    *,
    now: float,
    wall: float,
    deadline: float,
    expires_at: float | None,
    websocket_open: bool,
    last_recv: float,
    ping_sent: float,
    ping_interval: float,
    ping_timeout: float,
) -> Decision:
    """For a due connection: `now` on the loop's clock (deadline, last_recv, ping_sent are on
    it), `wall` on the epoch's (expires_at is). `expires_at` None: not authenticated yet, due
    by `deadline`; `websocket_open`: past the handshake and not closing; `ping_sent` 0: no
    ping awaits its pong."""
    if expires_at is None:
        if now < deadline:
            return Decision(Act.WAIT, deadline)
        if websocket_open:
            return Decision(Act.CLOSE, code=CloseCode.UNAUTHORIZED, reason="authentication timeout")
        return Decision(Act.ABORT)
    remaining = expires_at - wall
    if remaining <= 0:
        return Decision(Act.CLOSE, code=CloseCode.UNAUTHORIZED, reason="token expired")
    act = Act.WAIT
    if ping_sent:
        if now - ping_sent >= ping_timeout:
            return Decision(
                Act.CLOSE, code=CloseCode.INTERNAL_ERROR, reason="keepalive ping timeout"
            )
        keepalive = ping_sent + ping_timeout
    elif now - last_recv >= ping_interval:
        act = Act.PING
        keepalive = now + ping_timeout
    else:
        keepalive = last_recv + ping_interval
    return Decision(act, min(keepalive, now + remaining))
