"""A timing wheel for per-connection deadlines (handshake and auth timeouts, token expiry,
keepalive): one timer for the whole process that touches only the connections that are due,
so 10k idle connections cost nothing between their deadlines. Pure: times are passed in.

Imports no asyncio, asyncpg, redis or socket, and of notifyd only notifyd.core.
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar

T = TypeVar("T")


class TimerWheel(Generic[T]):
    """Items scheduled at a time come back from pop_due() once that time has passed, within
    `resolution` seconds. An item is returned once per schedule() call."""

    def __init__(self, now: float, resolution: float = 0.1) -> None:
        self._resolution = resolution
        self._slots: dict[int, list[T]] = {}
        self._cursor = math.floor(now / resolution)  # the first slot not yet popped

    def schedule(self, item: T, due: float) -> None:
        slot = max(math.ceil(due / self._resolution), self._cursor)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [item]
        else:
            bucket.append(item)

    def pop_due(self, now: float, limit: int | None = None) -> list[T]:
        """What is due by `now`, earliest slot first; at most `limit` items (the rest stay
        due, for the next call)."""
        last = math.floor(now / self._resolution)
        due: list[T] = []
        while self._cursor <= last:
            bucket = self._slots.get(self._cursor)
            if bucket:
                room = len(bucket) if limit is None else limit - len(due)
                if len(bucket) > room:
                    due.extend(bucket[:room])
                    del bucket[:room]
                    return due
                due.extend(bucket)
            self._slots.pop(self._cursor, None)
            self._cursor += 1
        return due

    def __len__(self) -> int:
        return sum(len(b) for b in self._slots.values())
