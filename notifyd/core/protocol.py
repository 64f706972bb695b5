"""Wire events of protocol version 2: decode and validate client frames into typed events,
encode server frames (orjson). Pure: no I/O, no asyncio; raises ClientError for bad input.
protocol/README.md and protocol/schema/ are the contract this module implements: each decoder
names the fields of its event's `data` once, and any other field is refused.

Imports no asyncio, asyncpg, redis or socket (of websockets, only its sans-I/O frames), and of
notifyd only notifyd.core.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, TypeVar

import orjson
from websockets.frames import Frame, Opcode

from notifyd.core.codes import ErrorCode
from notifyd.core.errors import ClientError
from notifyd.core.roles import ROLE_RULE, role_name

MAX_REF_LENGTH = 128
MAX_SYNC_LIMIT = 1000
MAX_MARK_IDS = 1000
MAX_CATEGORY_LENGTH = 64
MAX_PAGE_LIMIT = 100
DEFAULT_PAGE_LIMIT = 20
FEED_STATES = ("all", "unread", "unseen", "archived")
MAX_ACTION_ID_LENGTH = 64
MAX_PRESENCE_USERS = 100
MAX_PRESENCE_ROLES = 20
MAX_ID = 2**63 - 1
MAX_ID_DIGITS = len(str(MAX_ID))  # longer decimal numbers in a query are out of range unread
# the query parameter that may carry the token (?token=), on the handshake and every /v1 request
TOKEN_PARAMETER = "token"


def user_stream(user_id: str) -> str:
    """The stream of one user's own notifications."""
    return f"user:{user_id}"


def streams_of(user_id: str, roles: Iterable[str]) -> tuple[str, ...]:
    """Every stream a connection of this user and roles receives: its own, its roles', `all`."""
    return (user_stream(user_id), *(f"role:{r}" for r in roles), "all")


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class SyncRequest:
    cursors: dict[str, int]
    since: dt.datetime | None
    limit: int | None


@dataclass(frozen=True, slots=True)
class StateChange:
    """A change of one state of the user's items: `ids`, or all of them (`ids` None),
    narrowed to `category`; `until` for a snooze. Each operation is a subclass: its `state`
    (the database's name of it) and whether it sets it (`on`) or clears it."""

    state: ClassVar[str]
    on: ClassVar[bool]
    ids: tuple[int, ...] | None
    category: str | None = None
    until: dt.datetime | None = None


class MarkSeen(StateChange):
    __slots__ = ()
    state, on = "seen", True


class MarkRead(StateChange):
    __slots__ = ()
    state, on = "read", True


class MarkAllRead(StateChange):
    """notification:mark-all-read, as notification:mark-read with `all`."""

    __slots__ = ()
    state, on = "read", True


class MarkUnread(StateChange):
    __slots__ = ()
    state, on = "read", False


class Archive(StateChange):
    __slots__ = ()
    state, on = "archived", True


class Unarchive(StateChange):
    __slots__ = ()
    state, on = "archived", False


class Snooze(StateChange):
    __slots__ = ()
    state, on = "snoozed", True


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A page of the user's feed, newest first: `state` (FEED_STATES), `category`, at most
    `limit` items, after the cursor `before` (the (created_at, id) of the last item of the
    previous page; None: from the newest)."""

    state: str = "all"
    category: str | None = None
    limit: int = DEFAULT_PAGE_LIMIT
    before: tuple[dt.datetime, int] | None = None


@dataclass(frozen=True, slots=True)
class Act:
    """The user took action `action` of item `id`."""

    id: int
    action: str


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    user_ids: tuple[str, ...]
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ping:
    timestamp: int | float | str | None


ClientEvent = Auth | SyncRequest | StateChange | PageRequest | Act | PresenceQuery | Ping


@dataclass(frozen=True, slots=True)
class ClientFrame:
    event: ClientEvent
    ref: str | None


def _invalid(field: str, expected: str) -> ClientError:
    return ClientError(ErrorCode.INVALID_DATA, f"data.{field}: expected {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 with an offset (or Z); naive times are refused, since they are ambiguous.
    Raises ValueError, also for a time that is no moment in UTC's years 1 to 9999."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("no UTC offset")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00, before the year 1 in UTC
        raise ValueError("out of range") from None


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def page_cursor(created_at: dt.datetime, item_id: int) -> str:
    """The `next` of a feed page that ends at this item: opaque to clients."""
    micros = (created_at - _EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros:x}.{item_id:x}"


def _page_position(cursor: object) -> tuple[dt.datetime, int]:
    """The (created_at, id) a `next` cursor stands for. Raises ClientError."""
    if isinstance(cursor, str) and len(cursor) <= 40:
        micros, dot, item = cursor.partition(".")
        try:
            position = (_EPOCH + dt.timedelta(microseconds=int(micros, 16)), int(item, 16))
        except (ValueError, OverflowError):
            pass
        else:
            digits = micros.removeprefix("-")  # an item dated before 1970
            if dot and digits.isalnum() and item.isalnum() and 0 <= position[1] <= MAX_ID:
                return position
    raise _invalid("next", "the next of a previous page")


def format_epoch(seconds: float) -> str:
    """format_time of a moment given in seconds since the epoch."""
    return format_time(dt.datetime.fromtimestamp(seconds, dt.UTC))


Decode = Callable[[dict[str, Any]], ClientEvent]
E = TypeVar("E", bound=ClientEvent)
# event -> (the fields its data may have, its decoder)
_DECODERS: dict[str, tuple[frozenset[str], Decode]] = {}


def _decoder(
    event: str, *fields: str
) -> Callable[[Callable[[dict[str, Any]], E]], Callable[[dict[str, Any]], E]]:
    """Registers the decoder of `event`, whose data may hold `fields` and nothing else."""

    def register(decode: Callable[[dict[str, Any]], E]) -> Callable[[dict[str, Any]], E]:
        _DECODERS[event] = (frozenset(fields), decode)
        return decode

    return register


@_decoder("auth", "token")
def _auth(data: dict[str, Any]) -> Auth:
    token = data.get("token")
    if not isinstance(token, str) or not token:
        raise _invalid("token", "a non-empty string")
    return Auth(token)


@_decoder("notification:sync-request", "cursors", "since", "limit")
def _sync(data: dict[str, Any]) -> SyncRequest:
    cursors = data.get("cursors", {})
    if not isinstance(cursors, dict):
        raise _invalid("cursors", "an object mapping stream to last seq")
    for stream, seq in cursors.items():
        if not _is_int(seq) or not 0 <= seq <= MAX_ID:
            raise _invalid(f"cursors[{stream[:80]!r}]", "an integer >= 0")
    since_raw = data.get("since")
    since = None
    if since_raw is not None:
        if not isinstance(since_raw, str):
            raise _invalid("since", "an ISO 8601 time with a UTC offset")
        try:
            since = parse_time(since_raw)
        except ValueError:
            raise _invalid("since", "an ISO 8601 time with a UTC offset") from None
    limit = data.get("limit")
    if limit is not None and (not _is_int(limit) or not 1 <= limit <= MAX_SYNC_LIMIT):
        raise _invalid("limit", f"an integer from 1 to {MAX_SYNC_LIMIT}")
    return SyncRequest(dict(cursors), since, limit)


def _check_category(category: object) -> None:
    if not isinstance(category, str) or not 1 <= len(category) <= MAX_CATEGORY_LENGTH:
        raise _invalid("category", f"a string of 1 to {MAX_CATEGORY_LENGTH} characters")


def _state_change(cls: type[StateChange], data: dict[str, Any]) -> StateChange:
    """`ids`, or `all: true` (then `category` may narrow it); `until` for a snooze."""
    ids = data.get("ids")
    every = data.get("all")
    category = data.get("category")
    if every is not None and every is not True:
        raise _invalid("all", "true (or no all, with ids)")
    if (ids is None) == (every is None):
        raise _invalid("ids", "a list of notification ids, or all: true instead")
    if ids is not None and (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_MARK_IDS
        or not all(_is_int(i) and 1 <= i <= MAX_ID for i in ids)
    ):
        raise _invalid("ids", f"a list of 1 to {MAX_MARK_IDS} notification ids")
    if category is not None:
        if ids is not None:
            raise _invalid("category", "only with all: true (ids name the items)")
        _check_category(category)
    until = None
    if cls is Snooze:
        raw = data.get("until")
        try:
            until = parse_time(raw) if isinstance(raw, str) else None
        except ValueError:
            until = None
        if until is None or until <= dt.datetime.now(dt.UTC):
            raise _invalid("until", "an ISO 8601 time with a UTC offset, in the future")
    return cls(tuple(dict.fromkeys(ids)) if ids is not None else None, category, until)


_STATE_FIELDS = ("ids", "all", "category")
for _event, _cls in (
    ("notification:mark-seen", MarkSeen),
    ("notification:mark-read", MarkRead),
    ("notification:mark-unread", MarkUnread),
    ("notification:archive", Archive),
    ("notification:unarchive", Unarchive),
):
    _decoder(_event, *_STATE_FIELDS)(partial(_state_change, _cls))
_decoder("notification:snooze", *_STATE_FIELDS, "until")(partial(_state_change, Snooze))


@_decoder("notification:mark-all-read", "category")
def _mark_all_read(data: dict[str, Any]) -> MarkAllRead:
    change = _state_change(MarkAllRead, {"all": True, **data})
    assert isinstance(change, MarkAllRead)
    return change


@_decoder("notification:page", "state", "category", "limit", "next")
def _page(data: dict[str, Any]) -> PageRequest:
    state = data.get("state", "all")
    if state not in FEED_STATES:
        raise _invalid("state", " or ".join(FEED_STATES))
    category = data.get("category")
    if category is not None:
        _check_category(category)
    limit = data.get("limit", DEFAULT_PAGE_LIMIT)
    if not _is_int(limit) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise _invalid("limit", f"an integer from 1 to {MAX_PAGE_LIMIT}")
    cursor = data.get("next")
    before = _page_position(cursor) if cursor is not None else None
    return PageRequest(state, category, limit, before)


@_decoder("notification:act", "id", "action")
def _act(data: dict[str, Any]) -> Act:
    item: Any = data.get("id")
    action = data.get("action")
    if not _is_int(item) or not 1 <= item <= MAX_ID:
        raise _invalid("id", "a notification id")
    if not isinstance(action, str) or not 1 <= len(action) <= MAX_ACTION_ID_LENGTH:
        raise _invalid(
            "action", f"the id of one of its actions (1 to {MAX_ACTION_ID_LENGTH} characters)"
        )
    return Act(item, action)


@_decoder("presence:query", "userIds", "roles")
def _presence_query(data: dict[str, Any]) -> PresenceQuery:
    users = data.get("userIds", [])
    roles = data.get("roles", [])
    if (
        not isinstance(users, list)
        or len(users) > MAX_PRESENCE_USERS
        or not all(isinstance(u, str) and u for u in users)
    ):
        raise _invalid("userIds", f"a list of up to {MAX_PRESENCE_USERS} user ids")
    if not isinstance(roles, list) or len(roles) > MAX_PRESENCE_ROLES:
        raise _invalid("roles", f"a list of up to {MAX_PRESENCE_ROLES} role names")
    # named as token roles are (notifyd.core.roles), so the query asks about the roles users hold
    named = [role_name(r) if isinstance(r, str) else None for r in roles]
    if None in named:
        raise _invalid("roles", f"role names of {ROLE_RULE}")
    if not users and not roles:
        raise _invalid("userIds", "at least one user id or role")
    return PresenceQuery(
        tuple(dict.fromkeys(users)), tuple(dict.fromkeys(r for r in named if r is not None))
    )


@_decoder("ping", "timestamp")
def _ping(data: dict[str, Any]) -> Ping:
    ts = data.get("timestamp")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float | str)):
        raise _invalid("timestamp", "a number or a string")
    return Ping(ts)


CLIENT_EVENTS = frozenset(_DECODERS)
# event -> the fields its data may have (the schema's properties of that event's data)
CLIENT_EVENT_FIELDS = {event: fields for event, (fields, _) in _DECODERS.items()}


def _decimal(text: str) -> int | str:
    """A decimal number of a query string, or the text unchanged when it is none (the decoder
    then refuses it). Only ASCII digits count ('²' is a digit to str.isdigit), and no more than
    a bigint has: int() of thousands of digits is slow, and refused past 4300."""
    text = text.strip()
    if text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS:
        return int(text)
    return text


def _only(query: dict[str, list[str]], *names: str) -> None:
    """Refuses a query parameter of a /v1 request other than `names` and the token."""
    for name in query:
        if name not in names and name != TOKEN_PARAMETER:
            raise ClientError(ErrorCode.INVALID_DATA, f"unknown query parameter {name[:64]!r}")


def poll_request(query: dict[str, list[str]]) -> SyncRequest:
    """GET /v1/notifications: `cursor=<stream>:<seq>` (repeatable), `since`, `limit`, read as
    the sync-request they stand for."""
    _only(query, "cursor", "since", "limit")
    data: dict[str, Any] = {"cursors": {}}
    for item in query.get("cursor", []):
        stream, _, seq = item.rpartition(":")  # streams hold colons; the seq does not
        number = _decimal(seq)
        if not stream or not isinstance(number, int):
            raise _invalid("cursor", "<stream>:<seq>, e.g. user:42:17")
        data["cursors"][stream] = number
    if query.get("since"):
        data["since"] = query["since"][-1]
    if query.get("limit"):
        data["limit"] = _decimal(query["limit"][-1])
    return _sync(data)


def state_request(cls: type[StateChange]) -> Callable[[dict[str, list[str]]], StateChange]:
    """The decoder of POST /v1/notifications/<state>?ids=1,2,3 (or all=true&category=...;
    until=... for a snooze), read as the client frame it stands for."""
    names = ("ids", "all", "category", "until") if cls is Snooze else ("ids", "all", "category")

    def decode(query: dict[str, list[str]]) -> StateChange:
        _only(query, *names)
        data: dict[str, Any] = {}
        if "ids" in query:
            raw = ",".join(query["ids"]).split(",")
            data["ids"] = [_decimal(i) for i in raw if i.strip()]
        if "all" in query:
            flag = query["all"][-1].strip().lower()
            data["all"] = True if flag in ("1", "true") else flag
        for name in ("category", "until"):
            if name in query:
                data[name] = query[name][-1]
        return _state_change(cls, data)

    return decode


def mark_all_read_request(query: dict[str, list[str]]) -> StateChange:
    """POST /v1/notifications/read-all (optionally ?category=...)"""
    _only(query, "category")
    return _mark_all_read({"category": query["category"][-1]} if "category" in query else {})


def page_request(query: dict[str, list[str]]) -> PageRequest:
    """GET /v1/feed?state=unread&category=billing&limit=20&next=..."""
    _only(query, "state", "category", "limit", "next")
    data: dict[str, Any] = {
        name: query[name][-1] for name in ("state", "category", "next") if name in query
    }
    if "limit" in query:
        data["limit"] = _decimal(query["limit"][-1])
    return _page(data)


def act_request(query: dict[str, list[str]]) -> Act:
    """POST /v1/notifications/act?id=17&action=approve"""
    _only(query, "id", "action")
    data: dict[str, Any] = {"action": query["action"][-1]} if "action" in query else {}
    if "id" in query:
        data["id"] = _decimal(query["id"][-1])
    return _act(data)


def unread_count_request(query: dict[str, list[str]]) -> None:
    """GET /v1/unread-count (nothing but the token)"""
    _only(query)


def decode_client_frame(text: str | bytes) -> ClientFrame:
    """Decode one client text frame. Raises ClientError; its `ref` is set when the frame had one."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ClientError(ErrorCode.INVALID_JSON) from None
    if not isinstance(frame, dict):
        raise ClientError(ErrorCode.INVALID_FRAME, "a frame is a JSON object")
    ref = frame.get("ref")
    if ref is not None and (not isinstance(ref, str) or not 1 <= len(ref) <= MAX_REF_LENGTH):
        raise ClientError(
            ErrorCode.INVALID_FRAME, f"ref: expected a string of 1 to {MAX_REF_LENGTH} characters"
        )
    try:
        extra = frame.keys() - {"type", "data", "ref"}
        if extra:
            raise ClientError(ErrorCode.INVALID_FRAME, f"unexpected key {sorted(extra)[0]!r}")
        kind = frame.get("type")
        if not isinstance(kind, str):
            raise ClientError(ErrorCode.INVALID_FRAME, "type: expected a string")
        data = frame.get("data", {})
        if not isinstance(data, dict):
            raise ClientError(ErrorCode.INVALID_FRAME, "data: expected an object")
        decoder = _DECODERS.get(kind)
        if decoder is None:
            raise ClientError(ErrorCode.UNKNOWN_EVENT, f"unknown event {kind[:64]!r}")
        fields, decode = decoder
        unknown = data.keys() - fields
        if unknown:
            expected = ", ".join(sorted(fields)) or "no field"
            raise ClientError(
                ErrorCode.INVALID_DATA,
                f"data.{sorted(unknown)[0][:64]}: not a field of {kind} (expected {expected})",
            )
        return ClientFrame(decode(data), ref)
    except ClientError as exc:
        exc.ref = ref
        raise


def encode(kind: str, data: dict[str, Any], ref: str | None = None) -> bytes:
    """One server frame's JSON text."""
    if ref is None:
        return orjson.dumps({"type": kind, "data": data})
    return orjson.dumps({"type": kind, "data": data, "ref": ref})


def error_frame(exc: ClientError) -> bytes:
    return encode("error", {"code": exc.code, "message": exc.message}, exc.ref)


def websocket_text(payload: bytes) -> bytes:
    """The bytes of one unmasked, uncompressed text frame: identical for every recipient, so
    fan-out builds them once and writes them to each transport."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
