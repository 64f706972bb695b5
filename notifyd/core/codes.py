"""Every close code and error code of the protocol, and the reasons a token is refused.

This module is their one home: a new close code, error code or refusal reason is one line here
(plus its row in protocol/README.md and, for an error code, the schema's enum). Each member
carries what the edges need to translate it, so no module matches on message text:

- `CloseCode`: the WebSocket close codes notifyd sends or counts (RFC 6455 §7.4), each with its
  meaning and the label it is counted under in `notifyd_connections_closed_total`;
- `ErrorCode`: the `code` of an `error` frame and of an HTTP API error answer; its value is the
  wire string, and each carries its description (the default message), its HTTP status and its
  metric label;
- `AuthReason`: why a token was refused, each with its default message and the label it is
  counted under in `notifyd_auth_failures_total` (a public metric: the labels stay as they are).

Pure data: imports no asyncio, asyncpg, redis or socket, and nothing of notifyd.
"""

from __future__ import annotations

from enum import Enum, IntEnum, StrEnum
from typing import overload

from notifyd.core.limits import MAX_OPERATIONS

__all__ = ["AuthReason", "CloseCode", "ErrorCode", "close_label"]


class CloseCode(IntEnum):
    """A WebSocket close code (RFC 6455 §7.4.1; 4000-4999 are notifyd's own). `documented`:
    listed in protocol/README.md §9, the codes a client may get from notifyd; the others are
    counted when a client closes with them (1006 is never on the wire: the connection was lost).
    """

    _value_: int
    meaning: str
    documented: bool

    # CloseCode(1008) looks a member up (ValueError if there is none); the rows below make them
    @overload
    def __new__(cls, code: int) -> CloseCode: ...
    @overload
    def __new__(cls, code: int, meaning: str, documented: bool = True) -> CloseCode: ...
    def __new__(cls, code: int, meaning: str = "", documented: bool = True) -> CloseCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        member.documented = documented
        return member

    NORMAL_CLOSURE = 1000, "normal closure"
    GOING_AWAY = 1001, "server going away (shutdown or restart)"
    PROTOCOL_ERROR = 1002, "WebSocket protocol error"
    UNSUPPORTED_DATA = 1003, "the peer cannot accept this kind of data", False
    NO_STATUS_RCVD = 1005, "a close frame without a code", False
    ABNORMAL_CLOSURE = 1006, "lost without a close frame", False
    INVALID_DATA = 1007, "a text message that is not valid UTF-8"
    POLICY_VIOLATION = (
        1008,
        "the rate limit was exceeded persistently, or an auth frame for a user who already has "
        "the maximum number of connections",
    )
    MESSAGE_TOO_BIG = 1009, "a client message larger than the server's limit"
    MANDATORY_EXTENSION = 1010, "the client needed an extension the server did not offer", False
    INTERNAL_ERROR = 1011, "the keepalive ping went unanswered, or an internal server error"
    UNAUTHORIZED = 4001, "authentication failed, no auth frame in time, or the token expired"
    REVOKED = 4003, "the user's access was revoked"
    TOO_SLOW = 4008, "too many bytes were waiting for the client"

    @property
    def metric_label(self) -> str:
        """Its `code` label in notifyd_connections_closed_total."""
        return str(self.value)


def close_label(code: int) -> str:
    """The metric label of any close code: a CloseCode's own, "other" for the rest (a code of
    a client's choosing, 3000-4999, would otherwise make a label of every value)."""
    member = CloseCode._value2member_map_.get(code)
    return member.metric_label if isinstance(member, CloseCode) else "other"


class ErrorCode(StrEnum):
    """The `code` of an error: its value is the wire string (protocol/README.md §8 and the
    `error` frame's schema; §10 for the HTTP API). `status`: the HTTP status of an HTTP answer
    with this code (§10 documents those the HTTP API answers; a code only a WebSocket gets has
    the status an HTTP answer would have). `frame`: part of the error frame's enum (§8, the
    schema); False for the two codes only HTTP answers use."""

    _value_: str
    description: str
    status: int
    frame: bool

    # ErrorCode("forbidden") looks a member up (ValueError if there is none); the rows below
    # make them
    @overload
    def __new__(cls, wire: str) -> ErrorCode: ...
    @overload
    def __new__(cls, wire: str, status: int, description: str, frame: bool = True) -> ErrorCode: ...
    def __new__(
        cls, wire: str, status: int = 0, description: str = "", frame: bool = True
    ) -> ErrorCode:
        member = str.__new__(cls, wire)
        member._value_ = wire
        member.status = status
        member.description = description
        member.frame = frame
        return member

    INVALID_JSON = "invalid-json", 400, "the text frame is not valid JSON"
    INVALID_FRAME = (
        "invalid-frame",
        400,
        "not an object with a string type, an object data and a string ref",
    )
    UNKNOWN_EVENT = "unknown-event", 400, "type is not a client event"
    INVALID_DATA = "invalid-data", 400, "a field of data has the wrong type or is out of range"
    BINARY_NOT_SUPPORTED = (
        "binary-not-supported",
        400,
        "binary frames are not supported; send JSON text frames",
    )
    NOT_AUTHENTICATED = "not-authenticated", 401, "send an auth frame first"
    AUTH_FAILED = "auth-failed", 401, "the token was refused"
    AUTH_USER_MISMATCH = "auth-user-mismatch", 403, "the token is for another user"
    FORBIDDEN = "forbidden", 403, "this connection is not subscribed to that stream"
    SYNC_IN_PROGRESS = (
        "sync-in-progress",
        409,
        "the previous sync-request has not been answered yet",
    )
    RATE_LIMITED = (
        "rate-limited",
        429,
        "too many frames; slow down (persisting closes the connection with 1008)",
    )
    TOO_MANY_OPERATIONS = (
        "too-many-operations",
        429,
        f"this connection has {MAX_OPERATIONS} operations waiting for their answers; wait for one",
    )
    TOO_MANY_REQUESTS = (
        "too-many-requests",
        429,
        "too many HTTP requests of this user at once; wait for an answer",
    )
    UNAVAILABLE = "unavailable", 503, "the database is unreachable right now; retry later"
    INTERNAL_ERROR = "internal-error", 500, "an unexpected server error"
    NOT_FOUND = "not-found", 404, "no such endpoint", False
    METHOD_NOT_ALLOWED = "method-not-allowed", 405, "the method is not allowed here", False

    @property
    def metric_label(self) -> str:
        """The label under which a metric counts this error: its wire string, which the
        protocol keeps stable."""
        return self.value


class AuthReason(Enum):
    """Why a token was refused. `message`: what the client is told unless the refusal names
    more (it never echoes the token); `metric_label`: its `reason` label in
    notifyd_auth_failures_total, one of expired, revoked or invalid."""

    _value_: str
    message: str
    metric_label: str

    # AuthReason("expired") looks a member up; the rows below make them
    @overload
    def __new__(cls, slug: str) -> AuthReason: ...
    @overload
    def __new__(cls, slug: str, message: str, metric_label: str = "invalid") -> AuthReason: ...
    def __new__(cls, slug: str, message: str = "", metric_label: str = "invalid") -> AuthReason:
        member = object.__new__(cls)
        member._value_ = slug
        member.message = message
        member.metric_label = metric_label
        return member

    TOO_LONG = "too-long", "token too long"
    ALGORITHM = "algorithm", "token algorithm not allowed"
    SIGNATURE = "signature", "token signature invalid"
    MALFORMED = "malformed", "malformed token"
    NOT_CLAIMS = "not-claims", "token invalid"  # the payload is no JSON object
    CLAIM_TYPE = "claim-type", "a token claim has the wrong type"
    NO_AUDIENCE = "no-audience", "token lacks the 'aud' claim"
    AUDIENCE = "audience", "token audience not accepted"
    NO_ISSUER = "no-issuer", "token lacks the 'iss' claim"
    ISSUER = "issuer", "token issuer not accepted"
    NO_EXPIRY = "no-expiry", "token lacks the 'exp' claim"
    EXPIRY_TYPE = "expiry-type", "token exp is not a number"
    EXPIRY_RANGE = "expiry-range", "token exp is out of range"
    EXPIRED = "expired", "token expired", "expired"
    NOT_YET_VALID = "not-yet-valid", "token not valid yet"
    ISSUED_IN_FUTURE = "issued-in-future", "token issued in the future"
    NO_USER = "no-user", "token lacks the user claim"
    TOO_MANY_ROLES = "too-many-roles", "token has too many roles"
    REVOKED = "revoked", "token revoked", "revoked"
