# The one exception tree of notifyd, and the table of client-visible error codes.
# Errors are raised one way inside and translated at the edge: ClientError becomes an `error`
# frame (server.py), ConfigError becomes exit code 2 (cli.py). Imports nothing of notifyd.
"""
NotifydError
 ├── ConfigError        a setting is invalid; names the variable (exit code 2)
 ├── AuthError          a token was refused (HTTP 401 at the handshake, close 4001 later)
 ├── ConnectionLimit    a user has all the connections allowed (HTTP 429 at the handshake,
 │                      close 1008 on an auth frame)
 ├── ClientError        a client frame was refused; carries a code from ERROR_CODES
 ├── StoreError         the database could not do what was asked (answered as `unavailable`)
 │    └── PruneBusy     a retention batch gave way to an app transaction (retried)
 └── MigrationError     a migration could not be applied
"""

from __future__ import annotations

# code -> what it means; protocol/README.md documents the same table for client authors.
ERROR_CODES: dict[str, str] = {
    "invalid-json": "the text frame is not valid JSON",
    "invalid-frame": "not an object with a string type, an object data and a string ref",
    "unknown-event": "type is not a client event",
    "invalid-data": "a field of data has the wrong type or is out of range",
    "binary-not-supported": "binary frames are not supported; send JSON text frames",
    "not-authenticated": "send an auth frame first",
    "auth-failed": "the token was refused",
    "auth-user-mismatch": "the token is for another user",
    "forbidden": "this connection is not subscribed to that stream",
    "sync-in-progress": "the previous sync-request has not been answered yet",
    "rate-limited": "too many frames; slow down (persisting closes the connection with 1008)",
    "too-many-requests": "too many HTTP requests of this user at once; wait for an answer",
    "unavailable": "the database is unreachable right now; retry later",
    "internal-error": "an unexpected server error",
}


class NotifydError(Exception):
    """Base of every error notifyd raises on purpose."""


class ConfigError(NotifydError):
    """An invalid setting. `str()` is the one line printed before exiting with code 2."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


class AuthError(NotifydError):
    """A refused token; the message is safe to show the client (it never echoes the token)."""


class ConnectionLimit(NotifydError):
    """A user has NOTIFYD_MAX_CONNECTIONS_PER_USER connections to this process already; the
    message is safe to show the client."""


class ClientError(NotifydError):
    """A refused client frame, answered with an `error` frame carrying `code`."""

    def __init__(self, code: str, message: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"undocumented error code {code!r}")
        super().__init__(message or ERROR_CODES[code])
        self.code = code
        self.message = message or ERROR_CODES[code]
        self.ref: str | None = None  # the offending frame's ref, echoed in the error frame


class StoreError(NotifydError):
    """The database failed or is unreachable."""


class PruneBusy(StoreError):
    """A retention batch gave way to an app transaction holding a stream's row; retry soon."""


class MigrationError(NotifydError):
    """A migration file could not be applied."""
