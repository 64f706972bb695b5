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

from notifyd.core.counts import Tallies, tallies_of
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
    `tallies` ("u") the stream's counts, on the last row of each user stream only;
    `category` the row's ("" for none).
    `recheck`: a claim from a stale payload, published only if the table confirms it."""

    kind: ClassVar[str] = "n"
    stream: str
    seq: int
    id: int
    notification: Wire | None
    committed: float | None = None
    tallies: Tallies | None = None
    pending: bool = False
    recheck: bool = False
    category: str = ""


@dataclass(slots=True)
class Updated:
    """ "m": a notification changed, sent whole at its new seq (clients get
    notification:updated); by reference (`pending`) when too large for a payload, like `New`.

    - A user's own item: as that user sees it; `tallies` ("u") on the last event of the stream.
    - A user's receipt of a shared item changed (their own state of it): `viewer` is the user's
      stream, and `stream`/`seq` are the receipt's place there; the item is as they see it.
    - A shared item changed (an edit): each of its users sees it with their own state, so the
      event is `pending` until `views` (user stream -> wire) holds the view of each user with a
      connection here."""

    kind: ClassVar[str] = "m"
    stream: str
    seq: int
    id: int
    notification: Wire | None
    tallies: Tallies | None = None
    pending: bool = False
    viewer: str | None = None
    views: dict[str, Wire] | None = None
    item_stream: str | None = None  # of a receipt: the shared item's stream

    @property
    def shared(self) -> bool:
        """An edit of a shared item (not a user's own item, nor a user's receipt)."""
        return self.viewer is None and not self.stream.startswith("user:")


@dataclass(slots=True)
class Deleted:
    """ "d": a notification deleted (not by retention, whose deletes are silent); `seq` is
    its tombstone's, the stream's next. `tallies` ("u"): on the last event of each user
    stream."""

    kind: ClassVar[str] = "d"
    pending: ClassVar[bool] = False
    id: int
    stream: str
    seq: int
    tallies: Tallies | None = None


@dataclass(slots=True)
class UnreadCount:
    """ "c": retention deleted rows of a stream; as of `seq`, the stream's last, a user
    stream's `tallies` are these (a shared stream's counts are each user's, read again)."""

    kind: ClassVar[str] = "c"
    pending: ClassVar[bool] = False
    stream: str
    seq: int
    tallies: Tallies | None = None


@dataclass(slots=True)
class Marked:
    """ "a": a user marked everything of `target` delivered up to `upto` (of `category`, or
    every category) `state` (seen, read or archived) at `at`; the mark's place is `seq` in the
    user's `stream`. `tallies` ("u"): on the last mark of the statement."""

    kind: ClassVar[str] = "a"
    pending: ClassVar[bool] = False
    stream: str
    seq: int
    state: str
    category: str | None
    target: str
    upto: int
    at: str
    tallies: Tallies | None = None


@dataclass(slots=True)
class RevocationsChanged:
    """ "x": a row of notifyd.revocations inserted, updated or deleted. The claim is not
    trusted as such: the daemon reads the table again, which holds what committed."""

    kind: ClassVar[str] = "x"
    pending: ClassVar[bool] = False
    user: str
    at: float


Event: TypeAlias = New | Updated | Deleted | UnreadCount | Marked | RevocationsChanged
# A change of a stream at a seq: what catch-up reads back from the tables
Change: TypeAlias = New | Updated | Deleted | Marked
KINDS: dict[str, type[Event]] = {
    cls.kind: cls for cls in (New, Updated, Deleted, UnreadCount, Marked, RevocationsChanged)
}


def _tallies(raw: object) -> Tallies | None:
    return None if raw is None else tallies_of(raw)


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
                u = e.get("u")
                tallies = None if u is None else tallies_of(u)
                if n is None:
                    append(
                        New(
                            e["s"],
                            e["q"],
                            e["id"],
                            None,
                            e["t"],
                            tallies,
                            True,
                            category=e.get("c") or "",
                        )
                    )
                else:
                    append(
                        New(
                            n["stream"],
                            n["seq"],
                            n["id"],
                            n,
                            e["t"],
                            tallies,
                            category=n.get("category") or "",
                        )
                    )
            elif kind == "c":
                append(UnreadCount(e["s"], e["q"], _tallies(e.get("u"))))
            elif kind == "d":
                append(Deleted(e["id"], e["s"], e["q"], _tallies(e.get("u"))))
            elif kind == "m":
                n = e.get("n")
                tallies = _tallies(e.get("u"))
                if n is None:
                    viewer = e.get("v")
                    append(
                        Updated(
                            e["s"],
                            e["q"],
                            e["id"],
                            None,
                            tallies,
                            True,
                            viewer,
                            item_stream=e["i"] if viewer is not None else None,
                        )
                    )
                elif "s" in e:  # a user's receipt: its place in the user's stream
                    append(
                        Updated(
                            e["s"],
                            e["q"],
                            n["id"],
                            n,
                            tallies,
                            False,
                            e["s"],
                            item_stream=n["stream"],
                        )
                    )
                else:
                    update = Updated(n["stream"], n["seq"], n["id"], n, tallies)
                    update.pending = update.shared  # each of its users sees their own state
                    append(update)
            elif kind == "a":
                append(
                    Marked(
                        e["s"],
                        e["q"],
                        e["kind"],
                        e["c"],
                        e["target"],
                        e["upto"],
                        e["at"],
                        _tallies(e.get("u")),
                    )
                )
            elif kind == "x":
                append(RevocationsChanged(e["user"], e["at"]))
            else:
                log.error("unknown NOTIFY event kind %r dropped", kind)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise MalformedEvents(f"event {len(out)}: {exc.__class__.__name__} {exc}") from None
    return out
