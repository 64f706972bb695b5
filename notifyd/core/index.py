"""The in-memory index from stream to live connections. A user's devices are the subscribers of
their `user:<id>` stream, so no separate per-user index is kept (memory is per connection).
Synchronous and I/O-free; what a "connection" is stays opaque here (anything hashable).

Imports no asyncio, asyncpg, redis or socket, and of notifyd only notifyd.core.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

C = TypeVar("C")

_EMPTY: frozenset[object] = frozenset()


class StreamIndex(Generic[C]):
    """stream -> set of connections."""

    def __init__(self) -> None:
        self._by_stream: dict[str, set[C]] = {}

    def add(self, conn: C, streams: Iterable[str]) -> list[str]:
        """Index `conn`; returns the streams that had no local subscriber before."""
        new: list[str] = []
        for stream in streams:
            members = self._by_stream.get(stream)
            if members is None:
                members = self._by_stream[stream] = set()
                new.append(stream)
            members.add(conn)
        return new

    def remove(self, conn: C, streams: Iterable[str]) -> list[str]:
        """Unindex `conn`; returns the streams that now have no local subscriber."""
        gone: list[str] = []
        for stream in streams:
            members = self._by_stream.get(stream)
            if members is None:
                continue
            members.discard(conn)
            if not members:
                del self._by_stream[stream]
                gone.append(stream)
        return gone

    def subscribers(self, stream: str) -> set[C] | frozenset[C]:
        return self._by_stream.get(stream) or _EMPTY  # type: ignore[return-value]

    def streams(self) -> list[str]:
        """Every stream with a local subscriber."""
        return list(self._by_stream)
