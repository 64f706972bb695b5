# The in-memory index from stream to live connections, and from user to their connections.
# Synchronous and I/O-free; what a "connection" is stays opaque here (anything hashable).
from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

C = TypeVar("C")

_EMPTY: frozenset[object] = frozenset()


class StreamIndex(Generic[C]):
    """stream -> set of connections; user -> set of connections (one user, many devices)."""

    def __init__(self) -> None:
        self._by_stream: dict[str, set[C]] = {}
        self._by_user: dict[str, set[C]] = {}

    def add(self, conn: C, user_id: str, streams: Iterable[str]) -> list[str]:
        """Index `conn`; returns the streams that had no local subscriber before."""
        new: list[str] = []
        for stream in streams:
            members = self._by_stream.get(stream)
            if members is None:
                members = self._by_stream[stream] = set()
                new.append(stream)
            members.add(conn)
        self._by_user.setdefault(user_id, set()).add(conn)
        return new

    def remove(self, conn: C, user_id: str, streams: Iterable[str]) -> list[str]:
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
        devices = self._by_user.get(user_id)
        if devices is not None:
            devices.discard(conn)
            if not devices:
                del self._by_user[user_id]
        return gone

    def subscribers(self, stream: str) -> set[C] | frozenset[C]:
        return self._by_stream.get(stream) or _EMPTY  # type: ignore[return-value]

    def devices(self, user_id: str) -> set[C] | frozenset[C]:
        return self._by_user.get(user_id) or _EMPTY  # type: ignore[return-value]

    def streams(self) -> list[str]:
        return list(self._by_stream)

    def users(self) -> list[str]:
        return list(self._by_user)

    @property
    def connection_count(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    @property
    def user_count(self) -> int:
        return len(self._by_user)
