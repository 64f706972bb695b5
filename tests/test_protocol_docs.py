"""protocol/README.md and protocol/schema/*.json agree with each other and with the wire format."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import orjson
import pytest
from protocol_schema import (
    CLIENT_EVENT_TYPES,
    CLIENT_FRAME_SCHEMA,
    REGISTRY,
    SCHEMA_DIR,
    SCHEMAS,
    SERVER_EVENT_TYPES,
    SERVER_FRAME_SCHEMA,
    validate_client_frame,
    validate_notification,
    validate_server_frame,
)

from notifyd.core.codes import CloseCode, ErrorCode

ROOT = SCHEMA_DIR.parent.parent
README = ROOT / "protocol" / "README.md"

# The lists of the wire specification the server implements (error.data.code, close codes),
# written out: the protocol is the contract that notifyd.core.codes is held to.
ERROR_CODES = (
    "invalid-json",
    "invalid-frame",
    "unknown-event",
    "invalid-data",
    "binary-not-supported",
    "not-authenticated",
    "auth-failed",
    "auth-user-mismatch",
    "forbidden",
    "sync-in-progress",
    "rate-limited",
    "too-many-operations",
    "too-many-requests",
    "unavailable",
    "internal-error",
)
HTTP_ONLY_ERROR_CODES = ("not-found", "method-not-allowed")
CLOSE_CODES = (1000, 1001, 1002, 1007, 1008, 1009, 1011, 4001, 4003, 4008)

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _fences() -> list[tuple[int, str, str]]:
    """(line number, language, body) of every fenced block of the README."""
    text = _readme()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
        for m in FENCE.finditer(text)
    ]


def _json_blocks() -> list[tuple[int, str]]:
    return [(line, body) for line, lang, body in _fences() if lang == "json"]


def _frame(body: str) -> dict[str, Any]:
    frame: object = orjson.loads(body)
    assert isinstance(frame, dict), "a json block must be one frame object"
    return frame


def _validate(frame: dict[str, Any]) -> None:
    if frame.get("type") in CLIENT_EVENT_TYPES:
        validate_client_frame(frame)
    else:
        validate_server_frame(frame)


def _walk(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _notification(**changes: object) -> dict[str, Any]:
    notification: dict[str, Any] = {
        "id": 1207,
        "stream": "user:42",
        "seq": 318,
        "deliveredSeq": 318,
        "type": "appointment:created",
        "category": None,
        "title": "New appointment",
        "message": "Tomorrow 10:00",
        "data": {"appointmentId": 7},
        "priority": "high",
        "actionUrl": "/appointments/7",
        "seen": False,
        "seenAt": None,
        "read": False,
        "readAt": None,
        "archived": False,
        "archivedAt": None,
        "snoozedUntil": None,
        "actions": [],
        "groupKey": None,
        "groupCount": 1,
        "actors": [],
        "interactedAt": None,
        "action": None,
        "expiresAt": None,
        "createdAt": "2026-11-23T09:41:07.123456Z",
    }
    notification.update(changes)
    return notification


def _new(notification: dict[str, Any]) -> dict[str, Any]:
    return {"type": "notification:new", "data": {"notification": notification}}


# --- the schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = SCHEMAS[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://notifyd.dev/schema/{name}"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_ref_resolves(name: str) -> None:
    resolver = REGISTRY.resolver(base_uri=SCHEMAS[name]["$id"])
    refs = [node["$ref"] for node in _walk(SCHEMAS[name]) if isinstance(node.get("$ref"), str)]
    assert refs
    for ref in refs:
        resolver.lookup(ref)


def test_schema_files_are_the_three_documented() -> None:
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(SCHEMAS)


@pytest.mark.parametrize(
    ("schema", "types"),
    [(SERVER_FRAME_SCHEMA, SERVER_EVENT_TYPES), (CLIENT_FRAME_SCHEMA, CLIENT_EVENT_TYPES)],
    ids=["server", "client"],
)
def test_every_event_type_has_exactly_one_data_schema(
    schema: dict[str, Any], types: frozenset[str]
) -> None:
    discriminated = [branch["if"]["properties"]["type"]["const"] for branch in schema["allOf"]]
    assert sorted(discriminated) == sorted(types)


def test_event_type_sets() -> None:
    assert not SERVER_EVENT_TYPES & CLIENT_EVENT_TYPES
    assert {"connection-confirmed", "notification:new", "error", "auth:refreshed"} <= (
        SERVER_EVENT_TYPES
    )
    assert {"auth", "notification:sync-request", "ping"} <= CLIENT_EVENT_TYPES


def test_each_client_decoder_accepts_exactly_the_fields_of_its_schema() -> None:
    """The server refuses a field of `data` that its event's schema does not define, and
    accepts every one it does: one list of fields, in the schema and in the decoder."""
    from notifyd.core.protocol import CLIENT_EVENT_FIELDS

    resolver = REGISTRY.resolver(base_uri=CLIENT_FRAME_SCHEMA["$id"])
    assert set(CLIENT_EVENT_FIELDS) == CLIENT_EVENT_TYPES
    for branch in CLIENT_FRAME_SCHEMA["allOf"]:
        event = branch["if"]["properties"]["type"]["const"]
        data = resolver.lookup(branch["then"]["properties"]["data"]["$ref"]).contents
        assert data["additionalProperties"] is False, event
        assert set(data["properties"]) == CLIENT_EVENT_FIELDS[event], event


def test_error_code_enum_matches_the_specification() -> None:
    enum = SERVER_FRAME_SCHEMA["$defs"]["error"]["properties"]["code"]["enum"]
    assert sorted(enum) == sorted(ERROR_CODES)


def test_error_codes_match_the_server_table() -> None:
    assert sorted(code.value for code in ErrorCode if code.frame) == sorted(ERROR_CODES)
    assert sorted(code.value for code in ErrorCode if not code.frame) == sorted(
        HTTP_ONLY_ERROR_CODES
    )


def test_close_codes_match_the_server_table() -> None:
    assert sorted(code for code in CloseCode if code.documented) == sorted(CLOSE_CODES)


def _http_error_table() -> dict[str, int]:
    """code -> status, from the table of the HTTP polling API's errors (§10)."""
    rows = re.findall(r"^\| (\d{3}) \| `([a-z-]+)` \|", _readme(), re.MULTILINE)
    return {code: int(status) for status, code in rows}


def test_http_error_statuses_are_those_documented() -> None:
    table = _http_error_table()
    answered = ("invalid-data", "auth-failed", "forbidden", "too-many-requests")
    assert sorted(table) == sorted(
        (*answered, "internal-error", "unavailable", *HTTP_ONLY_ERROR_CODES)
    )
    for code, status in table.items():
        assert ErrorCode(code).status == status, code


# --- the README ----------------------------------------------------------------------------


def test_every_fenced_block_names_its_language() -> None:
    untagged = [line for line, lang, _ in _fences() if not lang]
    assert not untagged, f"README.md lines {untagged}: use ```json for frames, ```text otherwise"


@pytest.mark.parametrize(
    ("line", "body"), [pytest.param(line, body, id=f"line {line}") for line, body in _json_blocks()]
)
def test_readme_json_block_is_a_valid_frame(line: int, body: str) -> None:
    try:
        frame = _frame(body)
    except orjson.JSONDecodeError as exc:
        pytest.fail(f"README.md line {line}: not JSON: {exc}")
    assert set(frame) >= {"type", "data"}, f"README.md line {line}: a frame needs type and data"
    try:
        _validate(frame)
    except jsonschema.ValidationError as exc:
        pytest.fail(f"README.md line {line}: {exc.message}")


def test_readme_has_an_example_of_every_event() -> None:
    shown = {_frame(body).get("type") for _, body in _json_blocks()}
    missing = (SERVER_EVENT_TYPES | CLIENT_EVENT_TYPES) - shown
    assert not missing, f"no ```json example of {sorted(missing)}"


def test_readme_documents_every_event() -> None:
    text = _readme()
    for event in sorted(SERVER_EVENT_TYPES | CLIENT_EVENT_TYPES):
        assert re.search(rf"^\| \[?`{re.escape(event)}`", text, re.MULTILINE), event


@pytest.mark.parametrize("code", ERROR_CODES)
def test_readme_documents_error_code(code: str) -> None:
    assert f"| `{code}` |" in _readme()


@pytest.mark.parametrize("code", HTTP_ONLY_ERROR_CODES)
def test_readme_documents_http_only_error_code(code: str) -> None:
    assert f"| `{code}` |" in _readme()


@pytest.mark.parametrize("code", CLOSE_CODES)
def test_readme_documents_close_code(code: int) -> None:
    assert f"| {code} |" in _readme()


def test_readme_documents_the_handshake_and_http_routes() -> None:
    text = _readme()
    for needle in (
        "?token=",
        "Authorization: Bearer",
        "NOTIFYD_JWT_COOKIE",
        "10 seconds",
        "/healthz",
        "/readyz",
        "| 401 |",
        "| 403 |",
        "| 426 |",
    ):
        assert needle in text, needle


def test_readme_states_the_ordering_guarantee() -> None:
    text = " ".join(_readme().split())
    assert (
        "after a sync-request, a connection receives every change of each stream with seq "
        "greater than its cursor exactly once and in seq order: sync-response first, then live "
        "`notification:new`, `notification:updated` and `notification:deleted`"
    ) in text.lower()


# --- the validators ------------------------------------------------------------------------

VALID_SERVER: list[dict[str, Any]] = [
    _new(_notification()),
    _new(_notification(stream="all", read=False, actionUrl=None, data={})),
    _new(_notification(read=True, readAt="2026-11-23T09:45:30Z")),
    {"type": "notification:read", "data": {"ids": [], "readAt": None}, "ref": "r"},
    {"type": "pong", "data": {"timestamp": "t-1"}},
    {
        "type": "notification:sync-response",
        "data": {
            "notifications": [],
            "removed": [7],
            "marks": [],
            "cursors": {"user:42": 0},
            "reset": [],
            "hasMore": False,
        },
    },
    {"type": "notification:deleted", "data": {"id": 7, "stream": "user:42", "seq": 9}},
]

VALID_CLIENT: list[dict[str, Any]] = [
    {"type": "ping"},
    {"type": "notification:mark-all-read"},
    {"type": "notification:sync-request"},
    {"type": "notification:sync-request", "data": {"since": "2026-11-23T10:41:07+01:00"}},
    {"type": "notification:sync-request", "data": {"limit": 1000, "cursors": {"all": 0}}},
    {"type": "notification:mark-read", "data": {"ids": list(range(1, 1001))}},
]

INVALID_SERVER: dict[str, object] = {
    "notification missing a field": _new(
        {k: v for k, v in _notification().items() if k != "createdAt"}
    ),
    "notification extra field": _new(_notification(userId="42")),
    "priority urgent": _new(_notification(priority="urgent")),
    "id zero": _new(_notification(id=0)),
    "seq as string": _new(_notification(seq="318")),
    "empty type": _new(_notification(type="")),
    "bad stream": _new(_notification(stream="group:7")),
    "time without Z": _new(_notification(createdAt="2026-11-23T09:41:07.123456")),
    "time with offset": _new(_notification(createdAt="2026-11-23T09:41:07+00:00")),
    "read without readAt": _new(_notification(read=True, readAt=None)),
    "readAt while unread": _new(_notification(readAt="2026-11-23T09:45:30Z")),
    "unknown type": {"type": "notification:created", "data": {}},
    "client event from server": {"type": "ping", "data": {}},
    "extra top-level key": {"type": "pong", "data": {"timestamp": 1}, "id": 1},
    "missing data": {"type": "notification:unread-count"},
    "negative count": {
        "type": "notification:unread-count",
        "data": {"count": -1, "unseen": 0, "categories": {}},
    },
    "count as bool": {
        "type": "notification:unread-count",
        "data": {"count": True, "unseen": 0, "categories": {}},
    },
    "count without unseen": {"type": "notification:unread-count", "data": {"count": 1}},
    "seen without seenAt": _new(_notification(seen=True)),
    "archivedAt while not archived": _new(_notification(archivedAt="2026-11-23T09:45:30Z")),
    "marked without upto": {
        "type": "notification:marked",
        "data": {
            "stream": "user:42",
            "seq": 3,
            "state": "read",
            "category": None,
            "target": "all",
            "at": "2026-11-23T09:45:30Z",
        },
    },
    "marked of a state there is none of": {
        "type": "notification:marked",
        "data": {
            "stream": "user:42",
            "seq": 3,
            "state": "snoozed",
            "category": None,
            "target": "all",
            "upto": 3,
            "at": "2026-11-23T09:45:30Z",
        },
    },
    "updated with a seq but no stream": {
        "type": "notification:updated",
        "data": {"notification": _notification(), "seq": 4},
    },
    "protocolVersion 1": {
        "type": "connection-confirmed",
        "data": {
            "userId": "42",
            "roles": [],
            "connectionId": "c1",
            "serverTime": "2026-11-23T09:41:07.123456Z",
            "protocolVersion": 1,
        },
    },
    "sync-response without removed": {
        "type": "notification:sync-response",
        "data": {"notifications": [], "cursors": {}, "reset": [], "hasMore": False},
    },
    "deleted without its seq": {"type": "notification:deleted", "data": {"id": 7, "stream": "all"}},
    "readAt null with ids": {"type": "notification:read", "data": {"ids": [1], "readAt": None}},
    "auth:refreshed without roles": {
        "type": "auth:refreshed",
        "data": {"expiresAt": "2026-11-23T10:41:07.000000Z"},
    },
    "upper-case role": {
        "type": "auth:refreshed",
        "data": {"expiresAt": "2026-11-23T10:41:07.000000Z", "roles": ["Admin"]},
    },
    "unknown error code": {"type": "error", "data": {"code": "oops", "message": "x"}},
    "empty ref": {"type": "pong", "data": {"timestamp": 1}, "ref": ""},
    "not an object": ["pong", {}],
}

INVALID_CLIENT: dict[str, object] = {
    "sync-request limit 0": {"type": "notification:sync-request", "data": {"limit": 0}},
    "sync-request limit 1001": {"type": "notification:sync-request", "data": {"limit": 1001}},
    "sync-request negative cursor": {
        "type": "notification:sync-request",
        "data": {"cursors": {"user:42": -1}},
    },
    "sync-request bad since": {"type": "notification:sync-request", "data": {"since": "yesterday"}},
    "mark-read ids x": {"type": "notification:mark-read", "data": {"ids": ["x"]}},
    "mark-read no ids": {"type": "notification:mark-read", "data": {"ids": []}},
    "mark-read 1001 ids": {"type": "notification:mark-read", "data": {"ids": list(range(1, 1002))}},
    "mark-read without data": {"type": "notification:mark-read"},
    "mark-read with ids and all": {
        "type": "notification:mark-read",
        "data": {"ids": [1], "all": True},
    },
    "mark-seen all false": {"type": "notification:mark-seen", "data": {"all": False}},
    "archive category with ids": {
        "type": "notification:archive",
        "data": {"ids": [1], "category": "billing"},
    },
    "snooze without until": {"type": "notification:snooze", "data": {"ids": [1]}},
    "auth empty token": {"type": "auth", "data": {"token": ""}},
    "presence 101 users": {
        "type": "presence:query",
        "data": {"userIds": [str(i) for i in range(101)]},
    },
    "presence nothing asked": {"type": "presence:query", "data": {"userIds": [], "roles": []}},
    "presence no data": {"type": "presence:query", "data": {}},
    "presence 21 roles": {
        "type": "presence:query",
        "data": {"roles": [f"r{i}" for i in range(21)]},
    },
    "ping null timestamp": {"type": "ping", "data": {"timestamp": None}},
    "sync-request cursor for cursors": {
        "type": "notification:sync-request",
        "data": {"cursor": {"user:42": 1}},
    },
    "mark-all-read with ids": {"type": "notification:mark-all-read", "data": {"ids": [1]}},
    "presence non-ASCII role": {"type": "presence:query", "data": {"roles": ["\u00e4rzte"]}},
    "unknown type": {"type": "subscribe", "data": {}},
    "server event from client": {"type": "pong", "data": {"timestamp": 1}},
    "extra top-level key": {"type": "ping", "data": {}, "token": "x"},
    "ref too long": {"type": "ping", "ref": "r" * 129},
    "ref not a string": {"type": "ping", "ref": 7},
    "data not an object": {"type": "ping", "data": []},
}


@pytest.mark.parametrize("frame", VALID_SERVER)
def test_valid_server_frames(frame: dict[str, Any]) -> None:
    validate_server_frame(frame)


@pytest.mark.parametrize("frame", VALID_CLIENT, ids=lambda f: str(f["type"]))
def test_valid_client_frames(frame: dict[str, Any]) -> None:
    validate_client_frame(frame)


INVALID_CASES = [
    *(pytest.param(validate_server_frame, f, id=f"server: {k}") for k, f in INVALID_SERVER.items()),
    *(pytest.param(validate_client_frame, f, id=f"client: {k}") for k, f in INVALID_CLIENT.items()),
]


@pytest.mark.parametrize(("validate", "frame"), INVALID_CASES)
def test_invalid_frames_are_rejected(validate: Callable[[object], None], frame: object) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(frame)


def test_validation_error_names_the_event_and_the_field() -> None:
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_server_frame(_new(_notification(priority="urgent")))
    assert "'notification:new'" in caught.value.message
    assert "$.data.notification.priority" in caught.value.message
    assert "urgent" in caught.value.message


def test_validate_notification() -> None:
    validate_notification(_notification())
    with pytest.raises(jsonschema.ValidationError):
        validate_notification(_notification(data=[]))
