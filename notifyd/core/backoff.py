"""The one backoff policy: how long to wait before retrying something that failed (a reconnect
to PostgreSQL, to Redis or to a notifyd server, a query retried while a client waits).

Exponential with a cap and "equal jitter": attempt n (0, 1, ...) waits between half and all of
min(cap, base * 2**n), half fixed and half random, so that many processes or clients that
failed together spread out instead of retrying in step. The same shape as notifyd.js's
`backoffDelay` and protocol/README.md's recommended client loop.

Pure: imports no asyncio, asyncpg, redis or socket; the caller sleeps. The jitter source is
injectable (`rand`, returning [0, 1)) so tests get exact delays.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays for one retry loop: `next()` gives the delay before the next attempt and counts
    it, `reset()` after a success starts again from `base`."""

    __slots__ = ("attempt", "base", "cap", "rand")

    def __init__(self, base: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got {base} and {cap}")
        self.base, self.cap, self.rand = base, cap, rand
        self.attempt = 0  # failed attempts since the last reset

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry `attempt`: base doubled per attempt, up to the cap."""
        return min(self.cap, self.base * 2.0 ** min(attempt, 64))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry `attempt`, in [ceiling / 2, ceiling]."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + self.rand() * ceiling / 2

    def next(self) -> float:
        """The delay before the next attempt; counts one more failed attempt."""
        delay = self.delay(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
