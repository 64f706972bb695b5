"""The event loop's lag: how late a timer fires. Every INTERVAL seconds a sleep is timed against
the monotonic clock; what it overslept is what everything else on the loop waited too (a
callback that ran long, a full collection, the process off the CPU). Observed into a histogram
that /metrics serves as notifyd_event_loop_lag_seconds.

uvloop's timers count whole milliseconds, so an idle loop shows up to about 1 ms. Imports no
notifyd module; the clock and the sleep are given, for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

INTERVAL = 0.05  # seconds between samples: 20 a second, a few microseconds of CPU each


async def probe_forever(
    observe: Callable[[float], None],
    interval: float = INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Observes, every `interval`, how many seconds past it the loop woke the probe."""
    while True:
        due = clock() + interval
        await sleep(interval)
        observe(max(0.0, clock() - due))
