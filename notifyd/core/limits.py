"""Per-connection limits, pure (the time is passed in):

- MAX_OPERATIONS: client operations of one connection waiting for the database at once.
- TokenBucket: the rate limit on client frames, refilled at `rate` frames per second up to
  `burst`. A frame that finds the bucket empty is refused (an `error` frame, or no pong);
  a client that keeps sending while refused (`burst` refusals in a row) is closed with 1008.
- CloseGrace: how long a closing connection may keep its socket. After its close frame a
  connection stays until the client has taken every byte still waiting for it and answered;
  one that stops taking bytes for `grace` seconds, or is not done after `limit`, is reset.

Imports no asyncio, asyncpg, redis or socket, and of notifyd only notifyd.core.
"""

from __future__ import annotations

from enum import Enum

# client operations of one connection waiting for their answers (each holds a database
# connection of the shared pool while it runs)
MAX_OPERATIONS = 4


class Verdict(Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # answer with error `rate-limited` (a ping: no pong)
    CLOSE = "close"  # persistent abuse: close with 1008


class TokenBucket:
    __slots__ = ("_last", "_strikes", "_tokens")

    def __init__(self, burst: float, now: float) -> None:
        self._tokens = burst
        self._last = now
        self._strikes = 0

    def take(self, rate: float, burst: float, now: float) -> Verdict:
        self._tokens = min(burst, self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._strikes = 0
            return Verdict.ALLOW
        self._strikes += 1
        return Verdict.CLOSE if self._strikes >= burst else Verdict.REFUSE


class CloseGrace:
    """The grace of one closing connection, looked at from time to time with the bytes still
    waiting for the client (in the process and in the kernel). Progress is any drop of that
    figure, reaching zero included: the client is reading. It expires when `grace` seconds
    pass without progress (a client that stopped reading, or that has everything and does not
    close), or `limit` seconds after the close, however slowly the client reads."""

    __slots__ = ("_grace", "_least", "_progress", "_until")

    def __init__(self, waiting: int, now: float, grace: float, limit: float) -> None:
        self._least = waiting
        self._progress = now
        self._grace = grace
        self._until = now + limit

    def expired(self, waiting: int, now: float) -> bool:
        if waiting < self._least:
            self._least = waiting
            self._progress = now
        return now - self._progress >= self._grace or now >= self._until
