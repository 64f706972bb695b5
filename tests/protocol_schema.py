# The one place tests check frames against the wire format: loads protocol/schema/*.json once
# (linked by their $id through a referencing.Registry) and validates server and client frames,
# raising jsonschema.ValidationError that names the event type and the JSON path at fault.
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_DIR: Path = Path(__file__).resolve().parent.parent / "protocol" / "schema"
SCHEMA_FILES: tuple[str, ...] = ("notification.json", "server-frame.json", "client-frame.json")


def _load(name: str) -> dict[str, Any]:
    loaded: object = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise TypeError(f"{SCHEMA_DIR / name}: a schema must be a JSON object")
    return loaded


SCHEMAS: dict[str, dict[str, Any]] = {name: _load(name) for name in SCHEMA_FILES}
NOTIFICATION_SCHEMA: dict[str, Any] = SCHEMAS["notification.json"]
SERVER_FRAME_SCHEMA: dict[str, Any] = SCHEMAS["server-frame.json"]
CLIENT_FRAME_SCHEMA: dict[str, Any] = SCHEMAS["client-frame.json"]

REGISTRY: Registry[Any] = Registry().with_resources(
    (str(schema["$id"]), Resource.from_contents(schema, default_specification=DRAFT202012))
    for schema in SCHEMAS.values()
)


def _event_types(schema: dict[str, Any]) -> frozenset[str]:
    return frozenset(str(name) for name in schema["properties"]["type"]["enum"])


SERVER_EVENT_TYPES: frozenset[str] = _event_types(SERVER_FRAME_SCHEMA)
CLIENT_EVENT_TYPES: frozenset[str] = _event_types(CLIENT_FRAME_SCHEMA)

_VALIDATORS: dict[str, Any] = {
    "server": jsonschema.Draft202012Validator(SERVER_FRAME_SCHEMA, registry=REGISTRY),
    "client": jsonschema.Draft202012Validator(CLIENT_FRAME_SCHEMA, registry=REGISTRY),
    "notification": jsonschema.Draft202012Validator(NOTIFICATION_SCHEMA, registry=REGISTRY),
}


def _validate(kind: str, instance: object) -> None:
    error: Any = jsonschema.exceptions.best_match(_VALIDATORS[kind].iter_errors(instance))
    if error is None:
        return
    event = instance.get("type") if isinstance(instance, dict) else None
    what = f"{kind} frame {event!r}" if isinstance(event, str) else f"{kind} frame"
    if kind == "notification":
        what = "notification"
    raise jsonschema.ValidationError(
        f"{what}: at {error.json_path}: {error.message}",
        validator=error.validator,
        path=error.relative_path,
        cause=error.cause,
        validator_value=error.validator_value,
        instance=error.instance,
        schema=error.schema,
        schema_path=error.relative_schema_path,
    )


def validate_server_frame(frame: object) -> None:
    """Raise jsonschema.ValidationError unless `frame` is a valid server-to-client frame."""
    _validate("server", frame)


def validate_client_frame(frame: object) -> None:
    """Raise jsonschema.ValidationError unless `frame` is a valid client-to-server frame."""
    _validate("client", frame)


def validate_notification(notification: object) -> None:
    """Raise jsonschema.ValidationError unless `notification` is a valid Notification object."""
    _validate("notification", notification)
