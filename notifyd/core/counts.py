"""A connection's counts: unread and unseen items (neither archived nor snoozed), in all and per
category, over every stream it receives, as the notification:unread-count frame carries them.

They come in parts, one per stream, each exact as of a position (the stream's seq it was read
or announced at):
- the user's own stream: its tallies, from the database's counter rows, on every event of that
  stream (in commit order, so always the newest) and on a query at connect (kept only if newer);
- a shared stream (role:, all): counted by a query for this user (notifyd.counts), as of the
  stream's last seq in that query's snapshot. A new item published after that position adds
  one to unread and unseen of its category (nobody has acted on a new item yet); anything else
  that may change the user's part (their own action on a shared item, an edit or deletion of
  one) makes the part be read again.

A query that answers late misses the new items published while it ran: `Recent` keeps, per
shared stream, the category of the last items published on this node, which are added to a
part read below them. Pure: no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from notifyd.core.protocol import encode, websocket_text

# (unread, unseen) per category; "" is the items without a category
Tallies = dict[str, tuple[int, int]]
RECENT_KEPT = 4096  # new items remembered per shared stream for late queries


class Recent:
    """The new items published on this node per shared stream: (seq, category), in seq order."""

    __slots__ = ("_items", "last")

    def __init__(self) -> None:
        self._items: dict[str, deque[tuple[int, str]]] = {}
        self.last: dict[str, int] = {}  # stream -> seq of the last change published here

    def add(self, stream: str, seq: int, category: str) -> None:
        items = self._items.get(stream)
        if items is None:
            items = self._items[stream] = deque(maxlen=RECENT_KEPT)
        items.append((seq, category))
        self.last[stream] = seq

    def changed(self, stream: str, seq: int) -> None:
        """A change other than a new item: parts read below it are not brought up to date from
        here (they are read again)."""
        self._items.pop(stream, None)
        self.last[stream] = seq

    def since(self, stream: str, position: int) -> list[tuple[int, str]] | None:
        """The new items published after `position`, or None when what came after it is not
        all known here (a change other than a new item, or more than were kept)."""
        last = self.last.get(stream, 0)
        if last <= position:
            return []
        items = self._items.get(stream)
        if not items or items[0][0] > position + 1:
            return None
        return [item for item in items if item[0] > position]

    def forget(self, stream: str) -> None:
        self._items.pop(stream, None)
        self.last.pop(stream, None)


# (category, unread, unseen), sorted by category: a part's tallies, hashable
Row = tuple[str, int, int]
INTERNED_KEPT = 8192  # parts and totals kept for sharing (then the table starts again)


class Part:
    """A stream's part of a connection's counts as of `position`: immutable, and shared by the
    connections whose parts are equal (interned), so that a broadcast makes one new part for
    all of them (bumped(), kept on the part) instead of one each."""

    __slots__ = ("_bump", "position", "stream", "tallies")

    def __init__(self, stream: str, position: int, tallies: tuple[Row, ...]) -> None:
        self.stream = stream
        self.position = position
        self.tallies = tallies
        self._bump: tuple[int, str, Part] | None = None  # the last bumped(): (seq, category, it)

    def bumped(self, seq: int, category: str) -> Part:
        """This part with one more unread and unseen item of `category`, at `seq`."""
        last = self._bump
        if last is not None and last[0] == seq and last[1] == category:
            return last[2]
        rows = dict((c, (u, s)) for c, u, s in self.tallies)
        unread, unseen = rows.get(category, (0, 0))
        rows[category] = (unread + 1, unseen + 1)
        made = _part(self.stream, seq, rows)
        self._bump = (seq, category, made)
        return made


class Total:
    """A sum of tallies: unread, unseen, and (category, unread, unseen) per category, sorted,
    those at zero left out. Interned: equal totals are one object. What a count frame says is
    a Total none of whose figures is below zero; its frame is built once, at its first use
    (`frame`, by _frame_of())."""

    __slots__ = ("_bump", "categories", "frame", "unread", "unseen")

    def __init__(self, unread: int, unseen: int, categories: tuple[Row, ...]) -> None:
        self.unread = unread
        self.unseen = unseen
        self.categories = categories
        self.frame: bytes | None = None
        self._bump: tuple[str, Total] | None = None  # the last bumped(): (category, it)

    def bumped(self, category: str) -> Total:
        """One more unread and unseen item of `category` (a broadcast does this for each of its
        connections: their equal sums make the next one once)."""
        last = self._bump
        if last is not None and last[0] == category:
            return last[1]
        categories = self.categories
        if category:
            rows = {c: (u, s) for c, u, s in categories}
            unread, unseen = rows.get(category, (0, 0))
            rows[category] = (unread + 1, unseen + 1)
            categories = tuple(sorted((c, u, s) for c, (u, s) in rows.items() if u or s))
        made = _total(self.unread + 1, self.unseen + 1, categories)
        self._bump = (category, made)
        return made


_parts: dict[tuple[str, int, tuple[Row, ...]], Part] = {}
_totals: dict[tuple[int, int, tuple[Row, ...]], Total] = {}
_rows: dict[tuple[Row, ...], tuple[Row, ...]] = {}
# (a user's own tallies, the sum of their shared parts) -> what their count frame says
_shown: dict[tuple[tuple[Row, ...], Total], Total] = {}
_NO_ROWS: tuple[Row, ...] = ()
K = TypeVar("K")
V = TypeVar("V")


def _interned(table: dict[K, V], key: K, make: Callable[[], V]) -> V:
    """The one value kept for `key`, made at its first use. A full table starts again: only
    sharing is lost, the values in use stay with their connections."""
    value = table.get(key)
    if value is None:
        if len(table) >= INTERNED_KEPT:
            table.clear()
        value = table[key] = make()
    return value


def rows_of(tallies: Tallies) -> tuple[Row, ...]:
    """Tallies as sorted rows, interned (a user's own tallies are mostly alike)."""
    if not tallies:
        return _NO_ROWS
    rows = tuple(sorted((c, u, s) for c, (u, s) in tallies.items()))
    return _interned(_rows, rows, lambda: rows)


def _part(stream: str, position: int, tallies: Tallies) -> Part:
    """A shared stream's part: interned (most of its connections have equal parts)."""
    rows = rows_of(tallies)
    return _interned(_parts, (stream, position, rows), lambda: Part(stream, position, rows))


def _total(unread: int, unseen: int, categories: tuple[Row, ...]) -> Total:
    return _interned(
        _totals, (unread, unseen, categories), lambda: Total(unread, unseen, categories)
    )


def _sum(parts: list[tuple[Row, ...]], clamp: bool, start: Total | None = None) -> Total:
    """The sum of these tallies (and of `start`); `clamp`: no figure below zero (a counter row
    may lag behind), and categories at zero left out."""
    unread = unseen = 0
    per: dict[str, list[int]] = {}
    if start is not None:
        unread, unseen = start.unread, start.unseen
        per = {c: [u, s] for c, u, s in start.categories}
    for tallies in parts:
        for category, u, s in tallies:
            unread += u
            unseen += s
            if category:
                both = per.setdefault(category, [0, 0])
                both[0] += u
                both[1] += s
    if clamp:
        unread, unseen = max(0, unread), max(0, unseen)
        per = {c: [max(0, u), max(0, s)] for c, (u, s) in per.items()}
    return _total(unread, unseen, tuple((c, u, s) for c, (u, s) in sorted(per.items()) if u or s))


def _shown_of(own: tuple[Row, ...], rest: Total) -> Total:
    """What the count frame says for the own tallies and the sum of the shared parts."""
    return _interned(_shown, (own, rest), lambda: _sum([own], clamp=True, start=rest))


class State:
    """What a connection's counts are made of, less its own stream's name and position: its
    own tallies (interned rows) and its shared parts, with their sum and what the frame says,
    each worked out once. Interned: connections with equal counts share one, so that a
    broadcast makes each next state once for all of them and finds it with one lookup per
    connection (Counts.add's `made`)."""

    __slots__ = ("_total", "own", "parts", "rest")

    def __init__(self, own: tuple[Row, ...], parts: tuple[Part, ...]) -> None:
        self.own = own
        self.parts = parts  # a short tuple: a connection has a few streams
        self.rest: Total | None = None  # the sum of the parts' tallies, made at first use
        self._total: Total | None = None

    def total(self) -> Total:
        """The sum over every part, none of its figures below zero (interned: equal counts
        are one Total)."""
        total = self._total
        if total is None:
            rest = self.rest
            if rest is None:
                rest = self.rest = _sum([p.tallies for p in self.parts], clamp=False)
            total = self._total = _shown_of(self.own, rest)
        return total

    def find(self, stream: str) -> int:
        for i, part in enumerate(self.parts):
            if part.stream == stream:
                return i
        return -1

    def with_own(self, own: tuple[Row, ...]) -> State:
        """This state with other own tallies: the same parts, so the same sum (kept, not
        summed again at the next delivery)."""
        made = _state(own, self.parts)
        if made.rest is None:
            made.rest = self.rest
        return made

    def with_part(self, part: Part) -> State:
        """This state with `part` in place of its stream's (or added)."""
        i, parts = self.find(part.stream), self.parts
        if i < 0:
            return _state(self.own, (*parts, part))
        return _state(self.own, (*parts[:i], part, *parts[i + 1 :]))

    def without(self, stream: str) -> State:
        return _state(self.own, tuple(p for p in self.parts if p.stream != stream))

    def added(self, stream: str, seq: int, category: str) -> State:
        """This state with a new item at `seq` of a shared stream: one more unread and unseen,
        unless the stream has no part here or its part was read at or above `seq` (then
        itself)."""
        i = self.find(stream)
        if i < 0 or seq <= self.parts[i].position:
            return self
        parts = self.parts
        made = _state(self.own, (*parts[:i], parts[i].bumped(seq, category), *parts[i + 1 :]))
        if made.rest is None and self.rest is not None:
            made.rest = self.rest.bumped(category)  # (its sum, without summing every part)
        return made


_states: dict[tuple[int, tuple[Part, ...]], State] = {}


def _state(own: tuple[Row, ...], parts: tuple[Part, ...]) -> State:
    """The one State of these own tallies (interned rows: keyed by id, which the state holds)
    and parts."""
    return _interned(_states, (id(own), parts), lambda: State(own, parts))


_NO_STATE = State(_NO_ROWS, ())
# A broadcast's next state of each state of its connections' counts (Counts.add): the state
# itself when the new item does not change it.
Successors = dict[State, State]


class Counts:
    """One connection's counts: the user's own stream's name and position, and the State of
    its own tallies and of a part per shared stream, so that an event of the user's own stream
    (every delivery) and a new shared item (a broadcast, for each connection) cost a few
    dictionary lookups, not a sum."""

    __slots__ = ("_position", "_stream", "complete", "sent", "state")

    def __init__(self) -> None:
        self._stream: str | None = None  # the user's own stream, once its part is known
        self._position = 0  # its tallies' seq
        self.state = _NO_STATE
        self.complete = False  # every stream of the connection has its part (set by its reader)
        self.sent: Total | None = None  # what the last frame sent said

    def known(self, streams: tuple[str, ...]) -> bool:
        """Whether every one of `streams` has its part (until then no frame is sent)."""
        state = self.state
        return all(s == self._stream or state.find(s) >= 0 for s in streams)

    def announce(self, stream: str, position: int, rows: tuple[Row, ...]) -> None:
        """The own stream's tallies (rows_of()), from an event (events come in commit order:
        the newest)."""
        self._stream, self._position = stream, position
        self.state = self.state.with_own(rows)

    def read(self, stream: str, position: int, tallies: Tallies, own: bool) -> None:
        """A part as a query read it at `position`. The own stream's is kept only when newer
        than what events announced. A shared part always replaces what is known (the queries
        of one user run one at a time, so it holds the user's latest actions); the caller
        first adds to it the new items published after `position` (Recent.since)."""
        if own:
            if self._stream != stream or position > self._position:
                self.announce(stream, position, rows_of(tallies))
            return
        self.state = self.state.with_part(_part(stream, position, tallies))

    def add(self, stream: str, seq: int, category: str, made: Successors | None = None) -> bool:
        """A new item at `seq` of a shared stream: one more unread and unseen, unless the part
        was read at or above it. Returns whether the counts changed. A broadcast does this for
        every connection, with one `made` for all of them (a table per new item: it does not
        record which): connections in the same state (interned: most are) take the next state
        made for the first of them."""
        return self._added(stream, seq, category, {} if made is None else made) is not None

    def added_frame(self, stream: str, seq: int, category: str, made: Successors) -> bytes | None:
        """add(), then frame(), in one call: this runs for every connection of a broadcast."""
        total = self._added(stream, seq, category, made)
        return None if total is None else self._frame_to_send(total)

    def _added(self, stream: str, seq: int, category: str, made: Successors) -> Total | None:
        """add(): the counts' new total, or None when they did not change."""
        state = self.state
        following = made.get(state)
        if following is None:
            following = made[state] = state.added(stream, seq, category)
        if following is state:
            return None
        self.state = following
        return following.total()

    def frame(self) -> bytes | None:
        """The notification:unread-count frame of these counts, once each of their streams has
        its part and when they differ from the last one sent (then they are the last sent):
        equal counts are one Total, whose frame is built once."""
        return self._frame_to_send(self.state.total())

    def _frame_to_send(self, total: Total) -> bytes | None:
        """frame() of counts that stand at `total`."""
        if not self.complete or total is self.sent:
            return None
        self.sent = total
        return total.frame or _frame_of(total)

    def forget(self, stream: str) -> None:
        if stream == self._stream:
            self._stream, self._position = None, 0
            self.state = self.state.with_own(_NO_ROWS)
        else:
            self.state = self.state.without(stream)
        self.complete = False

    def total(self) -> Total:
        """The sum over every part, none of its figures below zero (interned: equal counts
        are one Total)."""
        return self.state.total()


def _frame_of(total: Total) -> bytes:
    """A Total's count frame, built at its first use and kept on it."""
    frame = total.frame = websocket_text(encode("notification:unread-count", frame_data(total)))
    return frame


def frame_data(total: Total) -> dict[str, Any]:
    """The data of notification:unread-count for Counts.total()."""
    return {
        "count": total.unread,
        "unseen": total.unseen,
        "categories": {c: {"unread": u, "unseen": s} for c, u, s in total.categories},
    }


def tallies_of(raw: object) -> Tallies:
    """An event's "u" ({category: [unread, unseen]}) as Tallies; raises TypeError/ValueError."""
    if type(raw) is not dict:
        raise TypeError("tallies are not an object")
    return {str(c): (int(v[0]), int(v[1])) for c, v in raw.items()}
