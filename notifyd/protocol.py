# Wire events of protocol version 1: decode and validate client frames into typed events,
# encode server frames (orjson). Pure: no I/O, no asyncio; raises ClientError for bad input.
# protocol/README.md and protocol/schema/ are the contract this module implements.
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.frames import Frame, Opcode

from notifyd.errors import ClientError

MAX_REF_LENGTH = 128
MAX_SYNC_LIMIT = 1000
MAX_MARK_IDS = 1000
MAX_PRESENCE_USERS = 100
MAX_PRESENCE_ROLES = 20
MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class SyncRequest:
    cursors: dict[str, int]
    since: dt.datetime | None
    limit: int | None


@dataclass(frozen=True, slots=True)
class MarkRead:
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MarkAllRead:
    pass


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    user_ids: tuple[str, ...]
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ping:
    timestamp: int | float | str | None


ClientEvent = Auth | SyncRequest | MarkRead | MarkAllRead | PresenceQuery | Ping


@dataclass(frozen=True, slots=True)
class ClientFrame:
    event: ClientEvent
    ref: str | None


def _invalid(field: str, expected: str) -> ClientError:
    return ClientError("invalid-data", f"data.{field}: expected {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 with an offset (or Z); naive times are refused, since they are ambiguous."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("no UTC offset")
    return value.astimezone(dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_epoch(seconds: float) -> str:
    """format_time of a moment given in seconds since the epoch."""
    return format_time(dt.datetime.fromtimestamp(seconds, dt.UTC))


def _auth(data: dict[str, Any]) -> Auth:
    token = data.get("token")
    if not isinstance(token, str) or not token:
        raise _invalid("token", "a non-empty string")
    return Auth(token)


def _sync(data: dict[str, Any]) -> SyncRequest:
    cursors = data.get("cursors", {})
    if not isinstance(cursors, dict):
        raise _invalid("cursors", "an object mapping stream to last seq")
    for stream, seq in cursors.items():
        if not _is_int(seq) or not 0 <= seq <= MAX_ID:
            raise _invalid(f"cursors[{stream!r}]", "an integer >= 0")
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


def _mark_read(data: dict[str, Any]) -> MarkRead:
    ids = data.get("ids")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_MARK_IDS
        or not all(_is_int(i) and 1 <= i <= MAX_ID for i in ids)
    ):
        raise _invalid("ids", f"a list of 1 to {MAX_MARK_IDS} notification ids")
    return MarkRead(tuple(dict.fromkeys(ids)))


def _mark_all_read(data: dict[str, Any]) -> MarkAllRead:
    return MarkAllRead()


def _presence_query(data: dict[str, Any]) -> PresenceQuery:
    users = data.get("userIds", [])
    roles = data.get("roles", [])
    if (
        not isinstance(users, list)
        or len(users) > MAX_PRESENCE_USERS
        or not all(isinstance(u, str) and u for u in users)
    ):
        raise _invalid("userIds", f"a list of up to {MAX_PRESENCE_USERS} user ids")
    if (
        not isinstance(roles, list)
        or len(roles) > MAX_PRESENCE_ROLES
        or not all(isinstance(r, str) and 0 < len(r) <= 200 for r in roles)
    ):
        raise _invalid("roles", f"a list of up to {MAX_PRESENCE_ROLES} role names")
    if not users and not roles:
        raise _invalid("userIds", "at least one user id or role")
    return PresenceQuery(tuple(dict.fromkeys(users)),
                         tuple(dict.fromkeys(r.lower() for r in roles)))


def _ping(data: dict[str, Any]) -> Ping:
    ts = data.get("timestamp")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float | str)):
        raise _invalid("timestamp", "a number or a string")
    return Ping(ts)


_DECODERS: dict[str, Callable[[dict[str, Any]], ClientEvent]] = {
    "auth": _auth,
    "notification:sync-request": _sync,
    "notification:mark-read": _mark_read,
    "notification:mark-all-read": _mark_all_read,
    "presence:query": _presence_query,
    "ping": _ping,
}
CLIENT_EVENTS = frozenset(_DECODERS)


def poll_request(query: dict[str, list[str]]) -> SyncRequest:
    """GET /v1/notifications: `cursor=<stream>:<seq>` (repeatable), `since`, `limit`, read as
    the sync-request they stand for."""
    data: dict[str, Any] = {"cursors": {}}
    for item in query.get("cursor", []):
        stream, _, seq = item.rpartition(":")  # streams hold colons; the seq does not
        if not stream or not seq.isdigit():
            raise _invalid("cursor", "<stream>:<seq>, e.g. user:42:17")
        data["cursors"][stream] = int(seq)
    for name in ("since", "limit"):
        if query.get(name):
            value = query[name][-1]
            data[name] = int(value) if name == "limit" and value.isdigit() else value
    return _sync(data)


def mark_read_request(query: dict[str, list[str]]) -> MarkRead:
    """POST /v1/notifications/read?ids=1,2,3"""
    raw = ",".join(query.get("ids", [])).split(",")
    ids: list[Any] = [int(i) if i.strip().isdigit() else i for i in raw if i.strip()]
    return _mark_read({"ids": ids})


def decode_client_frame(text: str | bytes) -> ClientFrame:
    """Decode one client text frame. Raises ClientError; its `ref` is set when the frame had one."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ClientError("invalid-json") from None
    if not isinstance(frame, dict):
        raise ClientError("invalid-frame", "a frame is a JSON object")
    ref = frame.get("ref")
    if ref is not None and (not isinstance(ref, str) or not 1 <= len(ref) <= MAX_REF_LENGTH):
        raise ClientError("invalid-frame",
                          f"ref: expected a string of 1 to {MAX_REF_LENGTH} characters")
    try:
        extra = frame.keys() - {"type", "data", "ref"}
        if extra:
            raise ClientError("invalid-frame", f"unexpected key {sorted(extra)[0]!r}")
        kind = frame.get("type")
        if not isinstance(kind, str):
            raise ClientError("invalid-frame", "type: expected a string")
        data = frame.get("data", {})
        if not isinstance(data, dict):
            raise ClientError("invalid-frame", "data: expected an object")
        decoder = _DECODERS.get(kind)
        if decoder is None:
            raise ClientError("unknown-event", f"unknown event {kind[:64]!r}")
        return ClientFrame(decoder(data), ref)
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
