"""A user's marks ("all read", "all seen", "all archived"): the mark that gives an item its
state, found by index probes (notifyd_private.first_mark, which the counts and the feed's pages
read), held to the definition, the first of the user's marks after the item's version that
covers it, read the long way; the counts to a recount of every item's states; the pages of
every filter (notifyd.feed, which tests an item by the latest mark) to that filter over every
item's states; and the order the probes rely on, a mark's `upto` never lower than an earlier
mark's of the same stream, under concurrent marks and inserts."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio
from hypothesis import example, given
from hypothesis import strategies as st
from support import DATABASE_EXAMPLES

# For every item and kind of mark: first_mark() beside the definition, the first by seq of the
# user's marks after the item's version (its own row's, or the user's receipt's, or 0) that
# cover it (as notifyd_private.viewer_states reads it, over every mark)
COMPARED = """
SELECT n.id, k.kind,
       (SELECT f.at FROM notifyd_private.first_mark(
            $1, n.stream, k.kind, coalesce(n.category, ''), n.dseq, v.after) f) AS probed,
       (SELECT (array_agg(m.at ORDER BY m.seq))[1] FROM notifyd.marks m
        WHERE m.ustream = $1 AND m.stream = n.stream AND m.kind = k.kind
          AND m.upto >= n.dseq AND m.category IN ('', coalesce(n.category, ''))
          AND m.seq > v.after) AS defined
FROM notifyd.notifications n
CROSS JOIN (VALUES ('seen'), ('read'), ('archived')) k(kind)
LEFT JOIN notifyd.receipts r ON r.ustream = $1 AND r.id = n.id
CROSS JOIN LATERAL (
    SELECT CASE k.kind WHEN 'seen' THEN s.seen_v WHEN 'read' THEN s.read_v
                       ELSE s.archived_v END AS after
    FROM (SELECT n.seen_v, n.read_v, n.archived_v WHERE n.stream = $1
          UNION ALL
          SELECT coalesce(r.seen_v, 0), coalesce(r.read_v, 0), coalesce(r.archived_v, 0)
          WHERE n.stream <> $1) s) v
WHERE n.stream = ANY ($2::text[]) AND n.seq IS NOT NULL
ORDER BY n.id, k.kind
"""
# The counts of every category, from every item's states (viewer_states; archived and snoozed
# items are not counted) ...
RECOUNT = """
SELECT coalesce(n.category, '') AS category,
       count(*) FILTER (WHERE s.read_at IS NULL) AS unread,
       count(*) FILTER (WHERE s.seen_at IS NULL) AS unseen
FROM notifyd.notifications n
CROSS JOIN LATERAL notifyd_private.viewer_states(n, $1) s
WHERE n.stream = ANY ($2::text[]) AND n.seq IS NOT NULL
  AND s.archived_at IS NULL AND s.snoozed_until IS NULL
GROUP BY 1
"""
# ... and as notifyd.counts() gives them (which reads first_mark())
COUNTED = """
SELECT category, sum(unread) AS unread, sum(unseen) AS unseen
FROM notifyd.counts($1, $2::text[]) GROUP BY 1
"""
# ... and the items of each filter of the feed, newest first, as the feed gives them, from
# every item's states
FILTERED = """
SELECT n.id, notifyd.wire_of(n, s.seen_at, s.read_at, s.archived_at, s.snoozed_until,
                             s.interacted_at, s.action) AS notification
FROM notifyd.notifications n
CROSS JOIN LATERAL notifyd_private.viewer_states(n, $1) s
WHERE n.stream = ANY ($2::text[]) AND n.seq IS NOT NULL
  AND ($4::text IS NULL OR n.category = $4) AND s.snoozed_until IS NULL
  AND CASE $3 WHEN 'archived' THEN s.archived_at IS NOT NULL
              WHEN 'unread' THEN s.archived_at IS NULL AND s.read_at IS NULL
              WHEN 'unseen' THEN s.archived_at IS NULL AND s.seen_at IS NULL
              ELSE s.archived_at IS NULL END
ORDER BY n.created_at DESC, n.id DESC
"""
# (items a page, items looked at a page): pages cut by the scan in the first round of items (10
# a stream), in a later one, and pages that take several rounds of 10, 20, 40 ...
PAGINGS = [(3, 4), (3, 15), (2, 40)]
CATEGORY_NAMES = (None, "billing", "news")
FILTERS = [
    (state, category)
    for state in ("all", "unread", "unseen", "archived")
    for category in CATEGORY_NAMES
]
CATEGORIES = st.sampled_from(CATEGORY_NAMES)
# (what, which stream: 0 own, 1 and 2 shared, a category, an item's index)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("item"), st.integers(0, 2), CATEGORIES, st.just(0)),
        # an own item of a group: collapses into the group's unread item, if any (new
        # version, unseen, to the top)
        st.tuples(st.just("grouped"), st.just(0), CATEGORIES, st.just(0)),
        st.tuples(
            st.sampled_from(["mark_read", "mark_seen", "archive"]),
            st.integers(0, 3),  # 3: every stream
            CATEGORIES,
            st.just(0),
        ),
        st.tuples(
            st.sampled_from(
                # (unsee: a plain UPDATE of an own item's seen_at to NULL)
                ["mark_read", "mark_seen", "mark_unread", "archive", "unarchive", "snooze", "unsee"]
            ),
            st.just(0),
            st.just(None),
            st.integers(0, 30),
        ),
    ),
    min_size=1,
    max_size=25,
)
_users = itertools.count()


@pytest_asyncio.fixture
async def marks_db(fresh_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(fresh_db)
    yield conn
    await conn.close()


@DATABASE_EXAMPLES
@given(script=steps)
# an item covered by a mark, set unread after it (its version past the mark), covered again
@example(
    [
        ("item", 0, None, 0),
        ("mark_read", 3, None, 0),
        ("mark_unread", 0, None, 1),
        ("mark_read", 3, None, 0),
    ]
)
# an announcement marked read, then unread on its own: unread (the mark is before its version)
@example([("item", 1, None, 0), ("mark_read", 3, None, 0), ("mark_unread", 0, None, 1)])
# a mark of every category from before the item, one of its category, one of every category:
# the first after the item's version does not cover it
@example(
    [
        ("mark_read", 1, None, 0),
        ("item", 1, "news", 0),
        ("mark_read", 1, "news", 0),
        ("mark_read", 1, None, 0),
    ]
)
# the same with marks of its category and of every category: the first after its version is
# of its category, though one of every category covered it first
@example(
    [
        ("item", 1, "news", 0),
        ("mark_read", 1, None, 0),
        ("mark_read", 1, "news", 0),
        ("mark_unread", 0, None, 1),
        ("mark_read", 1, "news", 0),
        ("mark_read", 1, None, 0),
    ]
)
@example(
    [
        ("item", 1, "news", 0),
        ("mark_seen", 1, "news", 0),
        ("mark_seen", 1, None, 0),
        ("mark_unread", 0, None, 1),
        ("mark_read", 1, "billing", 0),
        ("mark_read", 3, None, 0),
    ]
)
# an own item seen on its own, covered by a mark, then unseen by a plain UPDATE: unseen (its
# version past the mark)
@example(
    [
        ("item", 0, None, 0),
        ("mark_seen", 0, None, 1),
        ("mark_seen", 0, None, 0),
        ("unsee", 0, None, 0),
    ]
)
# a group's item seen by a mark, then collapsed into: unseen, at the top
@example([("grouped", 0, None, 0), ("mark_seen", 0, None, 0), ("grouped", 0, None, 0)])
# 14 items, the 10th newest archived: the archived filter's pages take a second round of items,
# which goes on after that item
@example([("item", 0, None, 0)] * 14 + [("archive", 0, None, 4)])
async def test_probes_counts_and_pages_agree_with_the_definition(
    marks_db: asyncpg.Connection, script: list[tuple[str, int, str | None, int]]
) -> None:
    """Items of an own and two shared streams, "all ..." marks of one stream or every one (of a
    category or all), and one item's state set and unset (its version moves past earlier
    marks), each in a transaction of its own (so each mark has its own time); then first_mark()
    of every item, the counts, and every filter's pages, each against the definition."""
    conn = marks_db
    n = next(_users)
    user, roles = f"u{n}", [f"a{n}", f"b{n}"]
    viewer = f"user:{user}"
    streams = [viewer, *(f"role:{r}" for r in roles)]
    ids: list[int] = []
    for what, which, category, index in script:
        one = ids[index % len(ids)] if ids else None  # (the item of a single-item step)
        if what == "item":
            ids.append(
                await conn.fetchval(
                    "INSERT INTO notifyd.notifications (user_id, role, type, title, category) "
                    "VALUES ($1, $2, 't', 'x', $3) RETURNING id",
                    user if which == 0 else None,
                    roles[which - 1] if which else None,
                    category,
                )
            )
        elif what == "grouped":
            ids.append(
                await conn.fetchval(
                    "SELECT notifyd.notify($1, 't', 'x', 'm', category => $2, group_key => 'g')",
                    user,
                    category,
                )
            )
        elif index == 0 and what in ("mark_read", "mark_seen", "archive"):  # every item
            marked = streams if which == 3 else [streams[which]]
            await conn.execute(
                f"SELECT notifyd.{what}($1, NULL, $2, $3::text[])", user, category, marked
            )
        elif one is None:
            continue  # a single-item step before any item
        elif what == "unsee":
            await conn.execute(
                "UPDATE notifyd.notifications SET seen_at = NULL WHERE id = $1 AND user_id = $2",
                one,
                user,
            )
        elif what == "snooze":
            await conn.execute(
                "SELECT notifyd.snooze($1, ARRAY[$2::bigint], now() + interval '1 hour', NULL, "
                "$3::text[])",
                user,
                one,
                streams,
            )
        else:
            await conn.execute(
                f"SELECT notifyd.{what}($1, ARRAY[$2::bigint], NULL, $3::text[])",
                user,
                one,
                streams,
            )
    compared = await conn.fetch(COMPARED, viewer, streams)
    for row in compared:
        assert row["probed"] == row["defined"], (row["id"], row["kind"], script)
    recount = {
        r["category"]: (r["unread"], r["unseen"])
        for r in await conn.fetch(RECOUNT, viewer, streams)
    }
    counted = {
        r["category"]: (r["unread"], r["unseen"])
        for r in await conn.fetch(COUNTED, viewer, streams)
    }
    assert {c: v for c, v in counted.items() if v != (0, 0)} == {
        c: v for c, v in recount.items() if v != (0, 0)
    }, script
    for state, category in FILTERS:
        filtered = [
            (r["id"], r["notification"])
            for r in await conn.fetch(FILTERED, viewer, streams, state, category)
        ]
        for lim, scan in PAGINGS:
            got = await paged(conn, viewer, streams, state, category, lim, scan)
            assert got == filtered, (state, category, lim, scan, script)
    # a NULL state is `all`
    assert await paged(conn, viewer, streams, None, None, 3, 4) == await paged(
        conn, viewer, streams, "all", None, 3, 4
    )


async def paged(
    conn: asyncpg.Connection,
    viewer: str,
    streams: list[str],
    state: str | None,
    category: str | None,
    lim: int,
    scan: int,
) -> list[tuple[int, str]]:
    """Every item of a filter of the feed (its id and object), page after page, with pages of
    `lim` items and at most `scan` looked at a page."""
    got: list[tuple[int, str]] = []
    before: tuple[object, int] | None = None
    while True:
        rows = await conn.fetch(
            "SELECT id, created_at, notification, notification IS NULL AS cut "
            "FROM notifyd.feed($1, $2::text[], $3, $4, $5, $6, $7, $8)",
            viewer,
            streams,
            state,
            category,
            *(before or (None, None)),
            lim,
            scan,
        )
        got += [(r["id"], r["notification"]) for r in rows if not r["cut"]]
        if len(rows) < lim and not (rows and rows[-1]["cut"]):
            return got
        before = (rows[-1]["created_at"], rows[-1]["id"])


async def test_a_marks_upto_never_falls_behind_an_earlier_marks(fresh_db: str) -> None:
    """The probes' premise: of one user's marks of one stream, a later one (by seq) covers at
    least what an earlier one covers, with marks and inserts into the stream racing: marks made
    as the app makes them (notifyd.mark_read() and the like, whose first row is of the user's
    own stream) and rows of shared streams only, inserted directly (the order rests on the
    marks' trigger, whatever writes them)."""
    pool = await asyncpg.create_pool(fresh_db, min_size=8, max_size=12)
    try:

        async def mark(kind: str) -> None:
            for _ in range(25):
                await pool.execute(
                    f"SELECT notifyd.{kind}('racer', NULL, NULL, ARRAY['all', 'role:r'])"
                )

        async def mark_shared(kind: str) -> None:
            for _ in range(40):
                await pool.execute(
                    "INSERT INTO notifyd.marks (ustream, seq, stream, kind, category, upto, at) "
                    "SELECT 'user:racer', 0, s, $1, '', 0, now() "
                    "FROM unnest(ARRAY['all', 'role:r']) s",
                    kind,
                )

        async def insert() -> None:
            for _ in range(60):
                await pool.execute(
                    "INSERT INTO notifyd.notifications (stream, type, title) "
                    "VALUES ('all', 't', 'x')"
                )
                await pool.execute(
                    "INSERT INTO notifyd.notifications (role, type, title) VALUES ('r', 't', 'x')"
                )

        await asyncio.gather(
            *(mark(k) for k in ("mark_read", "mark_seen")),
            *(mark_shared(k) for k in ("read", "seen", "archived")),
            *(insert() for _ in range(4)),
        )
        rows = await pool.fetch(
            "SELECT stream, seq, upto FROM notifyd.marks WHERE ustream = 'user:racer' "
            "ORDER BY stream, seq"
        )
        assert len(rows) > 200
        for stream, marks in itertools.groupby(rows, key=lambda r: r["stream"]):
            uptos = [r["upto"] for r in marks]
            assert uptos == sorted(uptos), stream
            assert uptos[-1] > uptos[0]  # the inserts did race the marks
    finally:
        await pool.close()


async def test_a_plain_update_sets_the_row_and_mark_unread_unreads_either(
    marks_db: asyncpg.Connection,
) -> None:
    """As the README says: an item read by "all read" has the mark's state, not the row's, so
    a plain UPDATE of read_at to NULL changes nothing; notifyd.mark_unread() unreads it, and a
    plain UPDATE of read_at to a time reads it again."""
    conn = marks_db
    nid = await conn.fetchval("SELECT notifyd.notify('pu', 't', 'x', 'm')")
    read = (
        "SELECT (notifyd.to_wire(n, 'user:pu')->>'read')::boolean "
        "FROM notifyd.notifications n WHERE id = $1"
    )
    assert await conn.fetchval(read, nid) is False
    await conn.execute("SELECT notifyd.mark_read('pu')")
    assert await conn.fetchval(read, nid) is True
    await conn.execute("UPDATE notifyd.notifications SET read_at = NULL WHERE id = $1", nid)
    assert await conn.fetchval(read, nid) is True
    await conn.execute("SELECT notifyd.mark_unread('pu', ARRAY[$1::bigint])", nid)
    assert await conn.fetchval(read, nid) is False
    await conn.execute("UPDATE notifyd.notifications SET read_at = now() WHERE id = $1", nid)
    assert await conn.fetchval(read, nid) is True
