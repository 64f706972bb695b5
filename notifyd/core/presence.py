"""Who is online on this process, and who may see whose presence. Pure: times are passed in,
nothing here touches a socket or Redis (cluster.py spreads these changes across processes).
A user is online while any of their devices is connected; lastSeen is when the last one left.

Imports no asyncio, asyncpg, redis or socket, and of notifyd only notifyd.core.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

MAX_REMEMBERED = 100_000  # last-seen times kept for offline users, oldest forgotten first


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A user came online (first device) or went offline (last device) at `at` (Unix time)."""

    online: bool
    user_id: str
    roles: tuple[str, ...]
    at: float


@dataclass(frozen=True, slots=True)
class UserPresence:
    user_id: str
    online: bool
    last_seen: float | None  # None: never seen (or forgotten)
    roles: tuple[str, ...]  # the roles it had when it came online; () when unknown


class LocalPresence:
    """Device counts per user on this process, and the online users per role."""

    def __init__(self) -> None:
        self._devices: dict[str, int] = {}
        self._roles: dict[str, tuple[str, ...]] = {}  # of online users
        self._per_role: dict[str, int] = {}
        self._last_seen: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()

    def connected(self, user_id: str, roles: tuple[str, ...], now: float) -> PresenceChange | None:
        """Counts a device; the change when the user just came online."""
        n = self._devices.get(user_id, 0)
        self._devices[user_id] = n + 1
        if n:
            return None
        self._last_seen.pop(user_id, None)
        self._roles[user_id] = roles
        for role in roles:
            self._per_role[role] = self._per_role.get(role, 0) + 1
        return PresenceChange(True, user_id, roles, now)

    def disconnected(self, user_id: str, now: float) -> PresenceChange | None:
        """Uncounts a device; the change when the user just went offline."""
        n = self._devices.get(user_id, 0) - 1
        if n > 0:
            self._devices[user_id] = n
            return None
        if n < 0:
            return None  # not counted: nothing to undo
        del self._devices[user_id]
        roles = self._roles.pop(user_id, ())
        for role in roles:
            left = self._per_role.get(role, 0) - 1
            if left > 0:
                self._per_role[role] = left
            else:
                self._per_role.pop(role, None)
        self._last_seen[user_id] = (now, roles)
        if len(self._last_seen) > MAX_REMEMBERED:
            self._last_seen.popitem(last=False)
        return PresenceChange(False, user_id, roles, now)

    def state(self, user_id: str, now: float) -> UserPresence:
        """lastSeen is `now` while online."""
        if user_id in self._devices:
            return UserPresence(user_id, True, now, self._roles.get(user_id, ()))
        seen = self._last_seen.get(user_id)
        if seen is None:
            return UserPresence(user_id, False, None, ())
        return UserPresence(user_id, False, seen[0], seen[1])

    def online(self) -> dict[str, tuple[str, ...]]:
        """Every online user with the roles it came online with."""
        return dict(self._roles)

    def online_count(self) -> int:
        return len(self._devices)

    def role_counts(self, roles: Iterable[str]) -> dict[str, int]:
        return {role: self._per_role.get(role, 0) for role in roles}


class PresencePolicy:
    """Watchers (NOTIFYD_PRESENCE_ROLES) receive every presence event and may query anyone.
    Anyone may query the users and role counts of a public role (NOTIFYD_PRESENCE_PUBLIC_ROLES),
    e.g. patients asking whether a doctor is online; other users look unknown to them."""

    def __init__(self, watcher_roles: Iterable[str], public_roles: Iterable[str]) -> None:
        self.watcher_roles = frozenset(watcher_roles)
        self.public_roles = frozenset(public_roles)

    def is_watcher(self, roles: Iterable[str]) -> bool:
        return not self.watcher_roles.isdisjoint(roles)

    def may_query(self, roles: Iterable[str]) -> bool:
        return bool(self.public_roles) or self.is_watcher(roles)

    def shown(self, viewer_roles: tuple[str, ...], subject: UserPresence) -> UserPresence:
        """What the viewer may know of the subject: all of it, or nothing (never seen)."""
        if self.is_watcher(viewer_roles) or not self.public_roles.isdisjoint(subject.roles):
            return subject
        return UserPresence(subject.user_id, False, None, ())

    def countable(self, viewer_roles: tuple[str, ...], role: str) -> bool:
        return self.is_watcher(viewer_roles) or role in self.public_roles
