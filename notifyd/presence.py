# Who is online on this process: online while any device is connected, lastSeen when the last
# one left. Local only; pure (times are passed in). Cluster-wide presence builds on this.
from __future__ import annotations

from collections import OrderedDict

MAX_REMEMBERED = 100_000  # last-seen times kept for offline users, oldest forgotten first


class LocalPresence:
    def __init__(self) -> None:
        self._devices: dict[str, int] = {}
        self._last_seen: OrderedDict[str, float] = OrderedDict()

    def connected(self, user_id: str) -> bool:
        """Counts a device; True when the user just came online."""
        n = self._devices.get(user_id, 0)
        self._devices[user_id] = n + 1
        self._last_seen.pop(user_id, None)
        return n == 0

    def disconnected(self, user_id: str, now: float) -> bool:
        """Uncounts a device; True when the user just went offline."""
        n = self._devices.get(user_id, 0) - 1
        if n > 0:
            self._devices[user_id] = n
            return False
        self._devices.pop(user_id, None)
        self._last_seen[user_id] = now
        if len(self._last_seen) > MAX_REMEMBERED:
            self._last_seen.popitem(last=False)
        return True

    def state(self, user_id: str) -> tuple[bool, float | None]:
        """(online, lastSeen); lastSeen is None while online or when never seen."""
        if user_id in self._devices:
            return True, None
        return False, self._last_seen.get(user_id)
