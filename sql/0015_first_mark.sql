-- notifyd schema, version 15: a user's count of a shared stream finds the mark that gives each
-- of their receipts' items its state by index probes, not by reading every mark.
-- An item's state, when its own row or receipt does not set it, is the time of the first of
-- the user's marks made after the item's version that covers it (of its stream, kind and
-- category or every category, with `upto` at or above its dseq). notifyd.counts() read every
-- such mark of every receipt's item to find the first: its cost grew with the user's marks
-- (bench/feed.py, a user with 100,000 own items and 609 mark rows: 4.66 ms a count; 1.66 ms
-- now).
-- A mark's `upto` never decreases along the user's seq (mark_version takes the user's stream
-- counter, whose row lock it holds to commit, before it reads the target's last seq afresh; a
-- repeatable-read writer whose snapshot predates an earlier mark's commit fails on that lock), so
-- among the marks of one stream, kind and category, those covering an item are those from the
-- first covering one on, and those after its version those from the first after it on: the
-- first of both is the later of these two, each one index probe away.
-- 1. notifyd_private.first_mark(): that lookup. notifyd_private.viewer_states (a page's and a
--    sync's states) still reads the marks whole: with the probes, a page of a user without
--    marks took 20% to 30% longer (each item's states are a query of their own, whose larger
--    plan is started at every item). tests/test_marks.py holds the two to the same answer.
-- 2. Two indexes serve its probes. The one on upto makes marks_upto_idx redundant (its columns
--    are a prefix of it), which is dropped first: the marks table is then locked while the two
--    are built, taking every lock this needs at once (its rows are few: one per stream and
--    state of an "all ..."). A lock taken later, on a table already in use, could deadlock
--    with a mark being written.
-- 3. notifyd.counts() reads it.

DROP INDEX notifyd.marks_upto_idx;
CREATE INDEX marks_first_covering_idx
    ON notifyd.marks (ustream, stream, kind, category, upto, seq) INCLUDE (at);
CREATE INDEX marks_first_after_idx
    ON notifyd.marks (ustream, stream, kind, category, seq) INCLUDE (at);

-- The time of the first of `viewer`'s marks of `kind` on `stream` made after `after` (a seq of
-- the viewer's stream: the item's version of that state) that covers an item at `dseq` of
-- `category` ('' for none): of that category or of every category. No row when none does.
-- SQL returning a set, neither strict nor security definer: inlined into the query that calls
-- it in FROM.
CREATE OR REPLACE FUNCTION notifyd_private.first_mark(
    viewer text, stream text, kind text, category text, dseq bigint, after bigint
) RETURNS TABLE (at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN a.seq > first_mark.after THEN a.at ELSE b.at END
    FROM (SELECT '' UNION ALL SELECT first_mark.category WHERE first_mark.category <> '')
         c(category)
    CROSS JOIN LATERAL (
        SELECT m.seq, m.at FROM notifyd.marks m
        WHERE m.ustream = first_mark.viewer AND m.stream = first_mark.stream
          AND m.kind = first_mark.kind AND m.category = c.category
          AND m.upto >= first_mark.dseq
        ORDER BY m.upto, m.seq LIMIT 1) a
    -- (looked up only when the first covering mark is not after the version; at version 0,
    -- an item whose state was never set on its own, it always is)
    LEFT JOIN LATERAL (
        SELECT m.seq, m.at FROM notifyd.marks m
        WHERE a.seq <= first_mark.after
          AND m.ustream = first_mark.viewer AND m.stream = first_mark.stream
          AND m.kind = first_mark.kind AND m.category = c.category
          AND m.seq > first_mark.after
        ORDER BY m.seq LIMIT 1) b ON true
    WHERE a.seq > first_mark.after OR b.seq IS NOT NULL
    ORDER BY CASE WHEN a.seq > first_mark.after THEN a.seq ELSE b.seq END LIMIT 1
$$;
REVOKE ALL ON FUNCTION notifyd_private.first_mark(text, text, text, text, bigint, bigint)
    FROM PUBLIC;

-- As in version 9, each receipt's mark states from first_mark().
CREATE OR REPLACE FUNCTION notifyd.counts(viewer text, streams text[])
RETURNS TABLE (stream text, last_seq bigint, category text, unread bigint, unseen bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    one     text;
    head    bigint;
    cat     text;
    t_read  bigint;
    t_seen  bigint;
    t_arch  bigint;
    adj_r   bigint;
    adj_s   bigint;
BEGIN
    FOREACH one IN ARRAY streams LOOP
        SELECT coalesce(max(s.last_seq), 0) INTO head FROM notifyd.streams s
        WHERE s.stream = one;
        stream := one; last_seq := head; category := ''; unread := 0; unseen := 0;
        RETURN NEXT;  -- every stream, with its position
        IF one = viewer THEN
            RETURN QUERY SELECT one, head, t.category, t.unread, t.unseen
                         FROM notifyd.tallies t WHERE t.stream = one;
            CONTINUE;
        END IF;
        IF NOT EXISTS (SELECT FROM notifyd.marks m WHERE m.ustream = viewer AND m.stream = one)
           AND NOT EXISTS (SELECT FROM notifyd.receipts r
                           JOIN notifyd.notifications n ON n.id = r.id
                           WHERE r.ustream = viewer AND n.stream = one) THEN
            -- untouched: every item is unread and unseen
            RETURN QUERY SELECT one, head, t.category, sum(t.items)::bigint, sum(t.items)::bigint
                         FROM notifyd.shared_tallies t
                         WHERE t.stream = one AND t.level = 16
                         GROUP BY t.category HAVING sum(t.items) > 0;
            CONTINUE;
        END IF;
        FOR cat IN SELECT DISTINCT t.category FROM notifyd.shared_tallies t
                   WHERE t.stream = one AND t.level = 16 AND t.items > 0 LOOP
            t_read := notifyd_private.marked_upto(viewer, one, 'read', cat);
            t_seen := notifyd_private.marked_upto(viewer, one, 'seen', cat);
            t_arch := notifyd_private.marked_upto(viewer, one, 'archived', cat);
            SELECT coalesce(sum((w.read_at IS NULL AND w.archived_at IS NULL
                                 AND w.snoozed_until IS NULL)::int
                                - (w.dseq > greatest(t_read, t_arch))::int), 0),
                   coalesce(sum((w.seen_at IS NULL AND w.archived_at IS NULL
                                 AND w.snoozed_until IS NULL)::int
                                - (w.dseq > greatest(t_seen, t_arch))::int), 0)
            INTO adj_r, adj_s
            FROM (SELECT n.dseq, r.snoozed_until,
                         coalesce(r.seen_at, (SELECT f.at FROM notifyd_private.first_mark(
                             viewer, one, 'seen', cat, n.dseq, r.seen_v) f)) AS seen_at,
                         coalesce(r.read_at, (SELECT f.at FROM notifyd_private.first_mark(
                             viewer, one, 'read', cat, n.dseq, r.read_v) f)) AS read_at,
                         coalesce(r.archived_at, (SELECT f.at FROM notifyd_private.first_mark(
                             viewer, one, 'archived', cat, n.dseq, r.archived_v) f))
                             AS archived_at
                  FROM notifyd.receipts r
                  JOIN notifyd.notifications n ON n.id = r.id
                  WHERE r.ustream = viewer AND n.stream = one
                    AND coalesce(n.category, '') = cat) w;
            stream := one; last_seq := head; category := cat;
            unread := notifyd_private.alive(one, cat, greatest(t_read, t_arch));
            unseen := CASE WHEN t_seen = t_read THEN unread
                           ELSE notifyd_private.alive(one, cat, greatest(t_seen, t_arch)) END;
            unread := unread + adj_r;
            unseen := unseen + adj_s;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
