"""sql/EVENTS.md against the triggers: every kind of change is made on a real database, the
payloads are captured on the channel, verified and decoded (notifyd.core.channel, events), and
each event held to the document's tables, parsed here, so the document cannot drift."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest_asyncio
from faults_support import eventually
from protocol_schema import validate_notification

from notifyd.core.channel import Channel, Opened
from notifyd.core.counts import tallies_of
from notifyd.core.events import KINDS, Event, New, Updated

EVENTS_MD = Path(__file__).resolve().parent.parent / "sql" / "EVENTS.md"
ENVELOPE = re.compile(r'[0-9a-f]{64}\{"k":\d+,"i":(\d+),"e":\[')
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# the event's key -> the attribute of its class that holds it
ATTRIBUTES = {
    "n": "notification",
    "id": "id",
    "s": "stream",
    "q": "seq",
    "t": "committed",
    "u": "tallies",
    "at": "at",
    "user": "user",
    "c": "category",
    "v": "viewer",
    "i": "item_stream",
    "kind": "state",
    "target": "target",
    "upto": "upto",
}


def _as_held(key: str, value: Any, event: Event) -> Any:
    """A raw event's value as its class holds it."""
    if key == "u":
        return tallies_of(value)
    if key == "c" and isinstance(event, New):
        return value or ""  # the category of a new item: "" for none
    return value


@dataclass(frozen=True)
class Form:
    """One section of EVENTS.md: a kind (and variant), its class, its keys."""

    kind: str
    variant: str
    cls: str
    keys: dict[str, tuple[str, bool]]  # key -> (type, always present)

    def fits(self, event: dict[str, Any]) -> bool:
        required = {k for k, (_, always) in self.keys.items() if always}
        return event.get("k") == self.kind and required <= set(event) <= set(self.keys)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.variant}".strip()


def documented_forms() -> list[Form]:
    forms: list[Form] = []
    heading = re.compile(r"### `(\w+)`(?: (by value|by reference))? · `(\w+)`")
    for section in EVENTS_MD.read_text(encoding="utf-8").split("\n### ")[1:]:
        match = heading.match("### " + section)
        assert match, f"EVENTS.md: a section heading not of the form of the others: {section[:60]}"
        keys: dict[str, tuple[str, bool]] = {}
        for line in section.splitlines():
            if line.startswith("| `"):
                key, type_, present, _meaning = (c.strip() for c in line.strip("|").split("|"))
                keys[key.strip("`")] = (type_.strip("`"), present == "always")
        assert keys, f"EVENTS.md: no key table under {match[0]}"
        forms.append(Form(match[1], match[2] or "", match[3], keys))
    return forms


def _type_holds(type_: str, value: object) -> bool:
    def integer(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    checks: dict[str, Callable[[object], bool]] = {
        "integer": integer,
        "seconds": lambda v: integer(v) or isinstance(v, float),
        "string": lambda v: isinstance(v, str),
        "string or null": lambda v: v is None or isinstance(v, str),
        "time": lambda v: isinstance(v, str) and TIME.fullmatch(v) is not None,
        "array of integers": lambda v: isinstance(v, list) and all(map(integer, v)),
        "tallies": lambda v: (
            isinstance(v, dict)
            and all(
                isinstance(t, list) and len(t) == 2 and all(map(integer, t)) for t in v.values()
            )
        ),
        "Notification": lambda v: isinstance(v, dict),
    }
    if type_.startswith('"'):
        return value == type_.strip('"')
    assert type_ in checks, f"EVENTS.md: a type this test does not know: {type_!r}"
    if type_ == "Notification":
        validate_notification(value)
    return checks[type_](value)


@dataclass
class Heard:
    payload: str
    raw: list[dict[str, Any]]
    events: list[Event]


class Capture:
    """A LISTEN connection's payloads, verified with the database's keys."""

    def __init__(self, conn: asyncpg.Connection, channel: Channel) -> None:
        self.conn = conn
        self.channel = channel
        self.payloads: list[str] = []
        self.all: list[Heard] = []

    async def after(self, writer: asyncpg.Connection, *statements: str) -> list[Heard]:
        """The payloads of `statements` (run in one transaction), each checked and decoded."""
        start = len(self.payloads)
        self.rounds += 1
        marker = f"{self.rounds}-done"
        async with writer.transaction():
            for statement in statements:
                await writer.execute(statement)
            # an empty NOTIFY on another channel, after them: when it is heard, all are
            await writer.execute("SELECT pg_notify('capture', $1)", marker)
        await eventually(lambda: self.done == marker, 10, f"the payloads of {statements}")
        heard = [self.check(p) for p in self.payloads[start:]]
        self.all.extend(heard)
        return heard

    done = ""
    rounds = 0

    def check(self, payload: str) -> Heard:
        assert len(payload.encode()) < 8000
        envelope = ENVELOPE.match(payload)
        assert envelope, payload[:120]
        body = orjson.loads(payload[64:])
        assert list(body) == ["k", "i", "e"] and body["e"], body
        opened = self.channel.open(payload)
        assert isinstance(opened, Opened) and not opened.stale and not opened.resync, opened
        assert len(opened.events) == len(body["e"])  # no kind unknown to the decoder
        return Heard(payload, body["e"], opened.events)


@pytest_asyncio.fixture
async def capture(fresh_db: str) -> AsyncIterator[Capture]:
    conn = await asyncpg.connect(fresh_db)
    channel = Channel()
    keys = await conn.fetch("SELECT id, secret FROM notifyd_private.channel_keys")
    channel.set_keys({r["id"]: bytes(r["secret"]) for r in keys})
    channel.listening_from(0)
    heard = Capture(conn, channel)
    await conn.add_listener("notifyd", lambda _c, _p, _ch, payload: heard.payloads.append(payload))

    def done(_c: object, _p: int, _ch: str, marker: object) -> None:
        heard.done = str(marker)

    await conn.add_listener("capture", done)
    try:
        yield heard
    finally:
        await conn.close()


def _kinds(heard: list[Heard]) -> list[str]:
    return [e["k"] for h in heard for e in h.raw]


def _events(heard: list[Heard]) -> list[dict[str, Any]]:
    return [e for h in heard for e in h.raw]


BIG = "jsonb_build_object('blob', repeat('x', 7100))"  # a wire form over 7,000 bytes


async def test_the_triggers_send_what_events_md_says(fresh_db: str, capture: Capture) -> None:
    forms = documented_forms()
    assert {f.kind for f in forms} == set(KINDS), "EVENTS.md and notifyd.core.events differ"
    w = await asyncpg.connect(fresh_db)
    try:
        await _make_every_change(capture, w)
    finally:
        await w.close()
    # every event is of exactly one documented form, with the documented types, and decodes
    # into the documented class holding the same values
    seen: set[str] = set()
    for heard in capture.all:
        for raw, event in zip(heard.raw, heard.events, strict=True):
            fitting = [f for f in forms if f.fits(raw)]
            assert len(fitting) == 1, f"{raw} fits {[f.name for f in fitting]} of EVENTS.md"
            form = fitting[0]
            seen.add(form.name)
            for key, value in raw.items():
                assert _type_holds(form.keys[key][0], value), (form.name, key, value)
            assert type(event).__name__ == form.cls and event.kind == form.kind
            for key, value in raw.items():
                if key != "k":
                    held = _as_held(key, value, event)
                    assert getattr(event, ATTRIBUTES[key]) == held, (form.name, key)
            if isinstance(event, Updated) and event.shared:
                assert event.pending  # each user's view of it is fetched
            elif isinstance(event, New | Updated):
                assert event.pending == (form.variant == "by reference")
                if not event.pending and "s" not in raw:
                    assert [event.stream, event.seq, event.id] == [
                        raw["n"]["stream"],
                        raw["n"]["seq"],
                        raw["n"]["id"],
                    ]
            if isinstance(event, New) and "u" not in raw:
                assert event.tallies is None
    assert seen == {f.name for f in forms}, "a documented form the triggers never sent"


async def _make_every_change(capture: Capture, w: asyncpg.Connection) -> None:
    after = capture.after
    # n by value, on a user stream: with the unread count
    small = await after(w, "SELECT notifyd.notify('42', 't', 'small', 'm')")
    assert _kinds(small) == ["n"] and _events(small)[0]["u"] == {"": [1, 1]}
    # several rows in one statement: the count on the last row of each user stream only
    multi = await after(
        w,
        "INSERT INTO notifyd.notifications (user_id, type, title) "
        "SELECT u, 't', 'multi' FROM unnest(ARRAY['42', '42', '43', '42']) u",
    )
    assert [(e["n"]["stream"], e.get("u")) for e in _events(multi)] == [
        ("user:42", None),
        ("user:42", None),
        ("user:42", {"": [4, 4]}),
        ("user:43", {"": [1, 1]}),
    ]
    # role and 'all' streams: no count
    others = await after(
        w,
        "SELECT notifyd.notify_role('Ops', 't', 'role', 'm')",
        "SELECT notifyd.broadcast('t', 'all', 'm')",
    )
    assert [(e["n"]["stream"], "u" in e) for e in _events(others)] == [
        ("role:ops", False),
        ("all", False),
    ]
    # too large for a payload: by reference, on each stream
    large = await after(
        w,
        f"SELECT notifyd.notify('42', 't', 'large', 'm', {BIG})",
        f"SELECT notifyd.notify_role('ops', 't', 'large', 'm', {BIG})",
    )
    assert [("n" in e, e["s"], e.get("u")) for e in _events(large)] == [
        (False, "user:42", {"": [5, 5]}),
        (False, "role:ops", None),
    ]
    # read marks: every changed row at the stream's next seq (its version), sent whole or by
    # reference, in seq order; the count on the last of the stream
    read = await after(
        w,
        "UPDATE notifyd.notifications SET read_at = now() "
        "WHERE user_id = '42' AND title <> 'small'",
    )
    assert _kinds(read) == ["m"] * 4
    assert [e["n"]["seq"] if "n" in e else e["q"] for e in _events(read)] == [6, 7, 8, 9]
    assert sum("n" not in e for e in _events(read)) == 1  # the large one
    assert [e.get("u") for e in _events(read)] == [None, None, None, {"": [1, 1]}]
    # a statement that changes nothing a client sees makes no version and no event
    assert await after(w, "UPDATE notifyd.notifications SET title = title") == []
    read = await after(w, "UPDATE notifyd.notifications SET read_at = now() WHERE title = 'small'")
    assert [(e["k"], e["n"]["seq"], e["n"]["read"], e["u"]) for e in _events(read)] == [
        ("m", 10, True, {"": [0, 0]})
    ]
    # unread again: the same, whole or by reference when large
    unread = await after(
        w,
        "UPDATE notifyd.notifications SET read_at = NULL "
        "WHERE user_id = '42' AND title IN ('small', 'large')",
    )
    assert sorted((e["k"], "n" in e) for e in _events(unread)) == [("m", False), ("m", True)]
    assert _events(unread)[-1]["u"] == {"": [2, 0]}  # read items stay seen
    assert all(e["n"]["read"] is False for e in _events(unread) if "n" in e)
    # a change of many rows: packed into payloads under NOTIFY's limit, in seq order
    await after(
        w,
        "INSERT INTO notifyd.notifications (user_id, type) "
        "SELECT '7', 't' FROM generate_series(1, 1500)",
    )
    many = await after(w, "UPDATE notifyd.notifications SET read_at = now() WHERE user_id = '7'")
    assert len(many) >= 2 and _kinds(many) == ["m"] * 1500
    assert [e["n"]["seq"] for e in _events(many)] == list(range(1501, 3001))
    assert _events(many)[-1]["u"] == {"": [0, 0]}
    # deleted: one event per row, each at the stream's next seq (its tombstone's); the count on
    # the last of the stream
    gone = await after(w, "DELETE FROM notifyd.notifications WHERE user_id = '42'")
    assert _kinds(gone) == ["d"] * 5
    assert [e["q"] for e in _events(gone)] == [13, 14, 15, 16, 17]
    assert [e.get("u") for e in _events(gone)] == [None] * 4 + [{"": [0, 0]}]
    tombstones = await w.fetch("SELECT id, seq FROM notifyd.removals WHERE stream = 'user:42'")
    assert sorted((r["seq"], r["id"]) for r in tombstones) == sorted(
        (e["q"], e["id"]) for e in _events(gone)
    )
    read_gone = await after(w, "DELETE FROM notifyd.notifications WHERE user_id = '7' AND id < 50")
    assert set(_kinds(read_gone)) == {"d"} and _events(read_gone)[-1]["u"] == {"": [0, 0]}
    # retention's deletes are silent but for the counts
    await after(
        w,
        "INSERT INTO notifyd.notifications (user_id, type, created_at) "
        "VALUES ('43', 't', now() - interval '1 year')",
    )
    pruned = await after(w, "SELECT notifyd.prune(interval '1 day', 10)")
    assert [(e["k"], e["s"], e["u"]) for e in _events(pruned)] == [("c", "user:43", {"": [1, 1]})]
    # of a shared stream, without counts (each user's are read again)
    await after(
        w,
        "UPDATE notifyd.notifications SET created_at = now() - interval '1 year' "
        "WHERE stream = 'all'",
    )
    pruned = await after(w, "SELECT notifyd.prune(interval '1 day', 10)")
    assert [(e["k"], e["s"], "u" in e) for e in _events(pruned)] == [("c", "all", False)]
    # a user's states of shared items: receipts, at their place in the user's stream, whole
    # or by reference; marks; an edit of a shared item (each user's view is the daemon's)
    made = await after(
        w, "SELECT notifyd.notify_role('ops', 't', 'shared', 'm', category => 'billing')"
    )
    shared = _events(made)[0]["n"]["id"]
    receipts = await after(
        w,
        f"SELECT notifyd.mark_read('43', ARRAY[{shared}]::bigint[], NULL, ARRAY['role:ops'])",
        "SELECT notifyd.mark_seen('43', ARRAY(SELECT id FROM notifyd.notifications "
        "WHERE stream = 'role:ops' AND title = 'large'), NULL, ARRAY['role:ops'])",
    )
    assert [(e["k"], e["s"], "n" in e) for e in _events(receipts)] == [
        ("m", "user:43", True),
        ("m", "user:43", False),
    ]
    assert _events(receipts)[0]["n"]["read"] is True
    marks = await after(
        w, "SELECT notifyd.archive('43', NULL, 'billing', ARRAY['user:43', 'role:ops'])"
    )
    assert [(e["k"], e["kind"], e["target"], e["c"], "u" in e) for e in _events(marks)] == [
        ("a", "archived", "user:43", "billing", False),
        ("a", "archived", "role:ops", "billing", True),
    ]
    edit = await after(w, f"UPDATE notifyd.notifications SET title = 'edited' WHERE id = {shared}")
    assert [(e["k"], e["n"]["stream"], e["n"]["read"]) for e in _events(edit)] == [
        ("m", "role:ops", False)  # as it is for a user who has not acted on it
    ]
    # a revocation, recorded then withdrawn
    revoked = await after(w, "SELECT notifyd.revoke_user('42')")
    withdrawn = await after(w, "DELETE FROM notifyd.revocations")
    assert [(e["k"], e["user"]) for e in _events(revoked + withdrawn)] == [
        ("x", "42"),
        ("x", "42"),
    ]
    await asyncio.sleep(0)
