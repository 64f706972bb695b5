"""A connection's counts (notifyd.core.counts.Counts): whatever the order of its parts' reads,
announcements, new shared items and forgotten streams, its total is the sum a fresh read of
every part gives, none of it below zero."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from notifyd.core.counts import Counts, Successors, Tallies, frame_data, rows_of

OWN = "user:1"
SHARED = ("all", "role:a")
CATEGORIES = ("", "billing", "news")

tallies = st.dictionaries(
    st.sampled_from(CATEGORIES), st.tuples(st.integers(-3, 5), st.integers(-3, 5)), max_size=3
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("announce"), st.just(OWN), tallies),
        st.tuples(st.just("read"), st.sampled_from((OWN, *SHARED)), tallies),
        st.tuples(st.just("add"), st.sampled_from(SHARED), st.sampled_from(CATEGORIES)),
        st.tuples(st.just("forget"), st.sampled_from((OWN, *SHARED)), st.none()),
    ),
    max_size=40,
)


def _expected(parts: dict[str, Tallies]) -> dict[str, object]:
    unread = sum(u for t in parts.values() for u, _ in t.values())
    unseen = sum(s for t in parts.values() for _, s in t.values())
    per: dict[str, list[int]] = {}
    for t in parts.values():
        for category, (u, s) in t.items():
            if category:
                both = per.setdefault(category, [0, 0])
                both[0] += u
                both[1] += s
    return {
        "count": max(0, unread),
        "unseen": max(0, unseen),
        "categories": {
            c: {"unread": max(0, u), "unseen": max(0, s)}
            for c, (u, s) in sorted(per.items())
            if max(0, u) or max(0, s)
        },
    }


def _one_more(part: Tallies, category: str) -> None:
    """A new shared item, as a fresh read of the part would count it."""
    unread, unseen = part.get(category, (0, 0))
    part[category] = (unread + 1, unseen + 1)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_the_total_is_the_sum_of_the_parts(script: list[tuple[str, str, object]]) -> None:
    counts = Counts()
    parts: dict[str, Tallies] = {}
    positions: dict[str, int] = {}
    for seq, (action, stream, arg) in enumerate(script, 1):
        if action == "announce":
            assert isinstance(arg, dict)
            counts.announce(stream, seq, rows_of(arg))
            parts[stream], positions[stream] = dict(arg), seq
        elif action == "read":
            assert isinstance(arg, dict)
            own = stream == OWN
            counts.read(stream, seq, arg, own=own)
            parts[stream], positions[stream] = dict(arg), seq
        elif action == "add":
            assert isinstance(arg, str)
            changed = counts.add(stream, seq, arg)
            assert changed == (stream in parts)
            if changed:
                _one_more(parts[stream], arg)
        else:
            counts.forget(stream)
            parts.pop(stream, None)
        assert frame_data(counts.total()) == _expected(parts)
    assert counts.known(tuple(parts)) and (not parts or counts.total() is counts.total())


def test_an_older_read_of_the_own_stream_is_not_kept() -> None:
    counts = Counts()
    counts.announce(OWN, 5, rows_of({"": (2, 2)}))
    counts.read(OWN, 4, {"": (1, 1)}, own=True)  # a query that began before the event
    assert frame_data(counts.total())["count"] == 2
    counts.read(OWN, 6, {"": (0, 1)}, own=True)
    assert frame_data(counts.total()) == {"count": 0, "unseen": 1, "categories": {}}


def test_a_new_shared_item_below_the_parts_position_is_not_counted() -> None:
    counts = Counts()
    counts.read("all", 10, {"news": (1, 1)}, own=False)
    assert not counts.add("all", 9, "news")
    assert counts.add("all", 11, "news")
    assert frame_data(counts.total())["categories"] == {"news": {"unread": 2, "unseen": 2}}


# connections that start with the same shared parts (as a broadcast's mostly do), each with
# its own tallies or none yet
connections = st.tuples(
    st.dictionaries(st.sampled_from(SHARED), tallies, min_size=1),
    st.lists(st.one_of(st.none(), tallies), min_size=2, max_size=5),
)
broadcast_steps = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(0, 4), st.sampled_from((OWN, *SHARED)), tallies),
        st.tuples(st.just("add"), st.just(0), st.sampled_from(SHARED), st.sampled_from(CATEGORIES)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(connections, broadcast_steps)
def test_a_broadcast_gives_each_connection_its_own_sum(
    start: tuple[dict[str, Tallies], list[Tallies | None]],
    script: list[tuple[str, int, str, object]],
) -> None:
    """A broadcast applies one new item to every connection's counts with one table of the
    successors it made (Counts.add's `made`): connections in equal states share them, and
    each still ends with the sum of its own parts."""
    shared, owns = start
    every = [Counts() for _ in owns]
    parts: list[dict[str, Tallies]] = [{} for _ in owns]
    for counts, own, mine in zip(every, owns, parts, strict=True):
        for stream, part in shared.items():
            counts.read(stream, 0, part, own=False)
            mine[stream] = dict(part)
        if own is not None:
            counts.read(OWN, 0, own, own=True)
            mine[OWN] = dict(own)
    for seq, (action, who, stream, arg) in enumerate(script, 1):
        if action == "read":
            assert isinstance(arg, dict)
            i = who % len(every)
            every[i].read(stream, seq, arg, own=stream == OWN)
            parts[i][stream] = dict(arg)
        else:
            assert isinstance(arg, str)
            made: Successors = {}
            for counts, mine in zip(every, parts, strict=True):
                assert counts.add(stream, seq, arg, made) == (stream in mine)
                if stream in mine:
                    _one_more(mine[stream], arg)
        for counts, mine in zip(every, parts, strict=True):
            assert frame_data(counts.total()) == _expected(mine)
