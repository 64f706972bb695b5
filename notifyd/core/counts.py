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
from typing import Any

# (unread, unseen) per category; "" is the items without a category
Tallies = dict[str, tuple[int, int]]
# (unread, unseen, ((category, unread, unseen), ...)): what a count frame says
Total = tuple[int, int, tuple[tuple[str, int, int], ...]]
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


class Counts:
    """The parts of one connection's counts: stream -> (position, tallies)."""

    __slots__ = ("_parts", "_total", "complete", "sent")

    def __init__(self) -> None:
        self._parts: dict[str, tuple[int, Tallies]] = {}
        self._total: Total | None = None  # total(), kept until a part changes other than by add()
        self.complete = False  # every stream of the connection has its part (set by its reader)
        self.sent: Total | None = None  # what the last frame sent said

    def known(self, streams: tuple[str, ...]) -> bool:
        """Whether every one of `streams` has its part (until then no frame is sent)."""
        return all(s in self._parts for s in streams)

    def announce(self, stream: str, position: int, tallies: Tallies) -> None:
        """The own stream's tallies, from an event (events come in commit order: the newest)."""
        self._parts[stream] = (position, tallies)
        self._total = None

    def read(self, stream: str, position: int, tallies: Tallies, own: bool) -> None:
        """A part as a query read it at `position`. The own stream's is kept only when newer
        than what events announced. A shared part always replaces what is known (the queries
        of one user run one at a time, so it holds the user's latest actions); the caller
        first adds to it the new items published after `position` (Recent.since)."""
        known = self._parts.get(stream)
        if not own:
            self._parts[stream] = (position, dict(tallies))  # its own: add() changes it
            self._total = None
        elif known is None or position > known[0]:
            self._parts[stream] = (position, tallies)
            self._total = None

    def add(self, stream: str, seq: int, category: str) -> bool:
        """A new item at `seq` of a shared stream: one more unread and unseen, unless the part
        was read at or above it. Returns whether the counts changed. (A shared part's tallies
        are this connection's own, made by read(): changed in place, as a broadcast does this
        for every connection.)"""
        known = self._parts.get(stream)
        if known is None or seq <= known[0]:
            return False
        tallies = known[1]
        unread, unseen = tallies.get(category, (0, 0))
        tallies[category] = (unread + 1, unseen + 1)
        self._parts[stream] = (seq, tallies)
        total = self._total
        if total is not None:  # a broadcast does this for every connection: no re-summing
            if category:
                self._total = None
            else:
                self._total = (total[0] + 1, total[1] + 1, total[2])
        return True

    def forget(self, stream: str) -> None:
        self._parts.pop(stream, None)
        self._total = None
        self.complete = False

    def total(self) -> Total:
        """(unread, unseen, ((category, unread, unseen), ...)) over every part, categories
        sorted, those at zero left out: hashable, so equal counts share one frame."""
        if self._total is None:
            self._total = self._sum()
        return self._total

    def _sum(self) -> Total:
        unread = unseen = 0
        per: dict[str, list[int]] = {}
        for _, tallies in self._parts.values():
            for category, (u, s) in tallies.items():
                unread += u
                unseen += s
                if category:
                    both = per.setdefault(category, [0, 0])
                    both[0] += u
                    both[1] += s
        return (
            max(0, unread),
            max(0, unseen),
            tuple((c, max(0, u), max(0, s)) for c, (u, s) in sorted(per.items()) if u or s),
        )


def frame_data(total: Total) -> dict[str, Any]:
    """The data of notification:unread-count for Counts.total()."""
    unread, unseen, categories = total
    return {
        "count": unread,
        "unseen": unseen,
        "categories": {c: {"unread": u, "unseen": s} for c, u, s in categories},
    }


def tallies_of(raw: object) -> Tallies:
    """An event's "u" ({category: [unread, unseen]}) as Tallies; raises TypeError/ValueError."""
    if type(raw) is not dict:
        raise TypeError("tallies are not an object")
    return {str(c): (int(v[0]), int(v[1])) for c, v in raw.items()}
