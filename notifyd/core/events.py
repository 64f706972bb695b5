"""NOTIFY events: what the database's triggers announce, decoded into typed objects.

The triggers of the schema (sql/0004_signed_events.sql, sql/0006_versions.sql) send lists of
events in signed payloads on the channel "notifyd"; notifyd.core.channel checks the envelope,
and `decode()` turns the list of a payload that verified into the classes below, as
notifyd.core.protocol does for client frames. sql/EVENTS.md documents every kind, its keys
and when a trigger sends it (a test holds the document to the triggers). A new kind means a
class and a branch of `decode()` here, a section in EVENTS.md, and its frames in
notifyd.core.fanout.Publisher.publish.

The hot path: every notification crosses `decode()` once per process, so the classes are
slotted dataclasses (not frozen: a row sent by reference is filled in once fetched) and
`decode()` checks no more than building them needs. An event without a key its kind requires,
or whose notification is not an object, raises `MalformedEvents`: the channel then treats the
payload as undecodable (its streams are caught up from the tables). An event of a kind this
version does not know (a newer schema's) is logged and dropped.

Pure: imports no asyncio, asyncpg, redis or socket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import orjson

from notifyd.core.errors import MalformedEvents

log = logging.getLogger(__name__)

# A notification's wire form, the protocol's Notification object: parsed from a payload, or
# the raw JSON of a row fetched from the table (inserted into frames as it is).
Wire: TypeAlias = dict[str, Any] | orjson.Fragment


@dataclass(slots=True)
class New:
    """ "n": a notification inserted, one event per row, in stream and seq order.

    `notification` is its wire form; a row too large for a payload comes by reference
    (`pending`: to be fetched by id before it is published; if gone by then, it stays None).
    `committed` ("t") is when the inserting statement ended, in seconds since the epoch;
    `unread` ("u") the stream's unread count, on the last row of each user stream only.
    `recheck`: a claim from a stale payload, published only if the table confirms it."""

    kind: ClassVar[str] = "n"
    stream: str
    seq: int
    id: int
    notification: Wire | None
    committed: float | None = None
    unread: int | None = None
    pending: bool = False
    recheck: bool = False


@dataclass(slots=True)
class Updated:
    """ "m": a notification changed by an UPDATE (any column), sent whole at its new seq
    (clients get notification:updated); by reference (`pending`) when too large for a
    payload, like `New`. `unread` ("u"): on the last event of each user stream."""

    kind: ClassVar[str] = "m"
    stream: str
    seq: int
    id: int
    notification: Wire | None
    unread: int | None = None
    pending: bool = False


@dataclass(slots=True)
class Deleted:
    """ "d": a notification deleted (not by retention, whose deletes are silent); `seq` is
    its tombstone's, the stream's next. `unread` ("u"): on the last event of each user
    stream."""

    kind: ClassVar[str] = "d"
    pending: ClassVar[bool] = False
    id: int
    stream: str
    seq: int
    unread: int | None = None


@dataclass(slots=True)
class UnreadCount:
    """ "c": a user stream's unread count after retention deleted unread rows of it."""

    kind: ClassVar[str] = "c"
    pending: ClassVar[bool] = False
    stream: str
    unread: int


@dataclass(slots=True)
class RevocationsChanged:
    """ "x": a row of notifyd.revocations inserted, updated or deleted. The claim is not
    trusted as such: the daemon reads the table again, which holds what committed."""

    kind: ClassVar[str] = "x"
    pending: ClassVar[bool] = False
    user: str
    at: float


Event: TypeAlias = New | Updated | Deleted | UnreadCount | RevocationsChanged
# A change of a stream at a seq: what catch-up reads back from the tables
Change: TypeAlias = New | Updated | Deleted
KINDS: dict[str, type[Event]] = {
    cls.kind: cls for cls in (New, Updated, Deleted, UnreadCount, RevocationsChanged)
}


def decode(events: object) -> list[Event]:
    """The typed events of a verified payload's "e" list, in order. Raises MalformedEvents."""
    if type(events) is not list:
        raise MalformedEvents("the events are not a list")
    out: list[Event] = []
    append = out.append
    try:
        for e in events:
            kind = e["k"]
            if kind == "n":
                n = e.get("n")
                if n is None:
                    append(New(e["s"], e["q"], e["id"], None, e["t"], e.get("u"), True))
                else:
                    append(New(n["stream"], n["seq"], n["id"], n, e["t"], e.get("u")))
            elif kind == "c":
                append(UnreadCount(e["s"], e["u"]))
            elif kind == "d":
                append(Deleted(e["id"], e["s"], e["q"], e.get("u")))
            elif kind == "m":
                n = e.get("n")
                if n is None:
                    append(Updated(e["s"], e["q"], e["id"], None, e.get("u"), True))
                else:
                    append(Updated(n["stream"], n["seq"], n["id"], n, e.get("u")))
            elif kind == "x":
                append(RevocationsChanged(e["user"], e["at"]))
            else:
                log.error("unknown NOTIFY event kind %r dropped", kind)
    except (KeyError, TypeError) as exc:
        raise MalformedEvents(f"event {len(out)}: {exc.__class__.__name__} {exc}") from None
    return out
