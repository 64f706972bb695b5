"""The one exception tree of notifyd. Errors are raised one way inside and translated at the
edge: a ClientError becomes an `error` frame (edge/server.py) or an HTTP answer with its code's
status (edge/http_api.py); an AuthError becomes HTTP 401 at the handshake, close 4001 on an
`auth` frame, or `auth-failed` for a fresh token, and is counted by its reason; a ConfigError
becomes exit code 2 (cli.py). The codes themselves live in notifyd.core.codes.

    NotifydError
     ├── ConfigError        a setting is invalid; names the variable (exit code 2)
     ├── AuthError          a token was refused; carries an AuthReason (code `auth-failed`)
     ├── ConnectionLimit    a user has all the connections allowed (HTTP 429 at the handshake,
     │                      close 1008 on an auth frame)
     ├── ClientError        a client frame or request was refused; carries an ErrorCode
     ├── StoreError         the database could not do what was asked (answered `unavailable`)
     │    └── PruneBusy     a retention batch gave way to an app transaction (retried)
     ├── MigrationError     a migration could not be applied
     └── MalformedEvents    a verified NOTIFY payload whose events are not what the triggers
                            send (the channel catches its streams up from the tables instead)

Imports nothing of notifyd but notifyd.core.codes; no asyncio, asyncpg, redis or socket.
"""

from __future__ import annotations

from notifyd.core.codes import AuthReason, ErrorCode


class NotifydError(Exception):
    """Base of every error notifyd raises on purpose."""


class ConfigError(NotifydError):
    """An invalid setting. `str()` is the one line printed before exiting with code 2."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


class AuthError(NotifydError):
    """A refused token. `str()` is the message, safe to show the client (it never echoes the
    token): the reason's own unless `message` names more. Metrics count it by `reason`."""

    code = ErrorCode.AUTH_FAILED

    def __init__(self, reason: AuthReason, message: str | None = None) -> None:
        super().__init__(message or reason.message)
        self.reason = reason

    @property
    def status(self) -> int:
        """The HTTP status of an answer refusing this token."""
        return self.code.status


class ConnectionLimit(NotifydError):
    """A user has NOTIFYD_MAX_CONNECTIONS_PER_USER connections to this process already; the
    message is safe to show the client."""


class ClientError(NotifydError):
    """A refused client frame or HTTP request, answered with an `error` frame or an HTTP error
    carrying `code`; `message` is the code's description unless given."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        try:
            code = ErrorCode(code)  # a string is looked up: refused here if undocumented
        except ValueError:
            raise ValueError(f"undocumented error code {code!r}") from None
        super().__init__(message or code.description)
        self.code = code
        self.message = message or code.description
        self.ref: str | None = None  # the offending frame's ref, echoed in the error frame

    @property
    def status(self) -> int:
        """The HTTP status of an answer carrying this error."""
        return self.code.status


class StoreError(NotifydError):
    """The database failed or is unreachable."""


class PruneBusy(StoreError):
    """A retention batch gave way to an app transaction holding a stream's row; retry soon."""


class MigrationError(NotifydError):
    """A migration file could not be applied."""


class MalformedEvents(NotifydError):
    """A verified NOTIFY payload whose events are not what the triggers send
    (notifyd.core.events.decode); notifyd.core.channel opens it as undecodable."""
