"""Admission: who may open a connection, and who must leave. A token is verified
(core/auth.py) and checked against the revocations (notifyd.revocations, read again whenever
one is announced or the LISTEN connection comes back), and a user has at most
NOTIFYD_MAX_CONNECTIONS_PER_USER connections; a revocation closes the connections whose token
it covers. One path for the WebSocket handshake, an auth frame and the HTTP API; each edge
translates the refusal (HTTP status, close code)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from notifyd.config import Settings
from notifyd.core.auth import Authenticator, Identity
from notifyd.core.codes import AuthReason, CloseCode
from notifyd.core.errors import AuthError, ConnectionLimit, StoreError
from notifyd.core.index import StreamIndex
from notifyd.core.protocol import user_stream
from notifyd.edge.server import Connection
from notifyd.ops.metrics import Metrics
from notifyd.storage.store import Store

log = logging.getLogger(__name__)


class Admission:
    """Tokens, revocations and the per-user connection limit of one process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        index: StreamIndex[Connection],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.index = index
        self.spawn = spawn
        self.auth = Authenticator(settings)
        self.revoked: dict[str, float] = {}  # user id -> moment of notifyd.revoke_user()
        self._revocations_read: asyncio.Task[None] | None = None
        self._revocations_again = False

    def reload(self, fresh: Settings) -> None:
        """New settings (SIGHUP): new keys apply to the next token verified, a new limit to
        the next connection."""
        self.settings = fresh
        self.auth = Authenticator(fresh)

    def verify(self, token: str) -> Identity:
        """A valid token whose user's access was not revoked after it was issued."""
        try:
            identity = self.auth.verify(token)
            if self._is_revoked(identity):
                raise AuthError(AuthReason.REVOKED)
        except AuthError as exc:
            self.metrics.auth_failed(exc.reason)
            raise
        return identity

    def admit(self, token: str) -> Identity:
        """Admission, one path for the handshake and an auth frame: a token verify() accepts,
        of a user under NOTIFYD_MAX_CONNECTIONS_PER_USER. Raises AuthError or ConnectionLimit,
        which each edge translates (HTTP 401 or 429 at the handshake, close 4001 or 1008 on an
        auth frame)."""
        identity = self.verify(token)
        devices = len(self.index.subscribers(identity.user_stream))
        if devices >= self.settings.max_connections_per_user:
            raise ConnectionLimit(f"too many connections for this user ({devices})")
        return identity

    def _is_revoked(self, identity: Identity) -> bool:
        at = self.revoked.get(identity.user_id)
        return at is not None and identity.revoked_by(at)

    def _revoke(self, user_id: str) -> None:
        """Close the user's connections whose token predates their revocation."""
        for conn in list(self.index.subscribers(user_stream(user_id))):
            identity = conn.session.identity
            if identity is not None and self._is_revoked(identity):
                log.info(
                    "closing connection %s: access of user %s revoked",
                    conn.session.connection_id,
                    user_id,
                )
                conn.close(CloseCode.REVOKED, "access revoked")

    async def reload_revocations(self) -> None:
        """notifyd.revocations as it is: what it holds, and nothing else, is revoked (a row
        inserted and deleted in one transaction revokes nobody)."""
        before, self.revoked = self.revoked, await self.store.revocations()
        for user_id, at in self.revoked.items():
            if before.get(user_id) != at:
                self._revoke(user_id)

    def revocations_changed(self) -> None:
        """A revocation was announced: the table is read again, one read at a time (a burst
        of announcements makes at most one more)."""
        if self._revocations_read is not None and not self._revocations_read.done():
            self._revocations_again = True
            return
        self._revocations_read = self.spawn(self._read_revocations())

    async def _read_revocations(self) -> None:
        again = True
        while again:
            self._revocations_again = False
            try:
                await self.reload_revocations()
            except StoreError as exc:  # the next LISTEN connect reads them again
                log.warning("re-reading revocations failed: %s", exc)
            again = self._revocations_again
