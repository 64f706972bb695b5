# Per-connection rate limit on client frames: a token bucket refilled at `rate` frames per
# second up to `burst`. A frame that finds the bucket empty is refused (an `error` frame);
# a client that keeps sending while refused (`burst` refusals in a row) is closed with 1008.
# Pure: the time is passed in.
from __future__ import annotations

from enum import Enum


class Verdict(Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # answer with error `rate-limited`
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
