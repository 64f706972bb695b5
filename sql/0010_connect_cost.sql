-- notifyd schema, version 10: what a (re)connecting device costs the database, cut.
-- 1. The counts of a batch of users in one query. A reconnect storm brings thousands of users
--    whose shared streams (`role:`, `all`) are untouched (no mark, no receipt): each such
--    stream's counts are the same for all of them, so they are summed once per batch, not once
--    per user; each user's own stream and each stream's head are an index probe. Only a user's
--    touched shared streams go through notifyd.counts(), as before.
-- 2. A row's states as a user sees them, in one SQL query that the planner inlines into the
--    query that asks (a sync reads them for each row it sends): the same lookups as before,
--    without two PL/pgSQL calls per row, which cost a sync-request more than its own query.

CREATE OR REPLACE FUNCTION notifyd.counts_many(asked jsonb)
RETURNS TABLE (i bigint, stream text, last_seq bigint, category text, unread bigint,
               unseen bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan SET jit = off
AS $$
BEGIN
    -- Each lookup is a correlated subquery or a LATERAL one kept apart (OFFSET 0), which the
    -- planner must run as an index probe per row, whatever it guesses of the batch's size: a
    -- hash join over the counter tables (rewritten at every insert, so often bloated) is
    -- never an option. The guess (100 users of 100 streams) also costs enough to have the
    -- query compiled (JIT): 0.7 s for a query of milliseconds, hence jit = off.
    RETURN QUERY
    WITH a AS MATERIALIZED (
        SELECT e.i, e.v ->> 0 AS viewer, s.stream,
               coalesce((SELECT st.last_seq FROM notifyd.streams st
                         WHERE st.stream = s.stream), 0) AS head
        FROM jsonb_array_elements(asked) WITH ORDINALITY e(v, i)
        CROSS JOIN LATERAL jsonb_array_elements_text(e.v -> 1) s(stream)
    ), shared AS MATERIALIZED (
        SELECT a.i, a.viewer, a.stream, a.head,
               coalesce((SELECT true FROM notifyd.marks m
                         WHERE m.ustream = a.viewer AND m.stream = a.stream LIMIT 1),
                        (SELECT true FROM notifyd.receipts r
                         JOIN notifyd.notifications n ON n.id = r.id
                         WHERE r.ustream = a.viewer AND n.stream = a.stream LIMIT 1),
                        false) AS touched
        FROM a WHERE a.stream <> a.viewer
    ), untouched AS MATERIALIZED (
        -- every item of the stream is unread and unseen for a user who never acted on it
        SELECT d.stream, t.category, t.items
        FROM (SELECT DISTINCT sh.stream FROM shared sh WHERE NOT sh.touched) d
        CROSS JOIN LATERAL (
            SELECT st.category, sum(st.items)::bigint AS items FROM notifyd.shared_tallies st
            WHERE st.stream = d.stream AND st.level = 16
            GROUP BY st.category HAVING sum(st.items) > 0) t
    )
    -- every stream, with its position (rows in no particular order: each carries its user's i)
    SELECT a.i, a.stream, a.head, ''::text, 0::bigint, 0::bigint FROM a
    UNION ALL
    SELECT a.i, a.stream, a.head, t.category, t.unread, t.unseen
    FROM a CROSS JOIN LATERAL (
        SELECT tl.category, tl.unread, tl.unseen FROM notifyd.tallies tl
        WHERE tl.stream = a.stream OFFSET 0) t
    WHERE a.stream = a.viewer
    UNION ALL
    SELECT sh.i, sh.stream, sh.head, u.category, u.items, u.items
    FROM shared sh JOIN untouched u ON u.stream = sh.stream
    WHERE NOT sh.touched
    UNION ALL
    SELECT sh.i, c.stream, c.last_seq, c.category, c.unread, c.unseen
    FROM shared sh CROSS JOIN LATERAL notifyd.counts(sh.viewer, ARRAY[sh.stream]) c
    WHERE sh.touched;
END
$$;
REVOKE ALL ON FUNCTION notifyd.counts_many(jsonb) FROM PUBLIC;

-- 2. A row's states as `viewer` sees them: its own columns when the row is the viewer's, else
-- the viewer's receipt (or none); a state left unset is the time of the first of the viewer's
-- marks made after it (after its version) that covers the row. SQL returning a set, neither
-- strict nor security definer: the planner inlines it into a query that calls it in FROM.
CREATE FUNCTION notifyd_private.viewer_states(n notifyd.notifications, viewer text)
RETURNS TABLE (seen_at timestamptz, read_at timestamptz, archived_at timestamptz,
               snoozed_until timestamptz, interacted_at timestamptz, action text)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(o.seen_at, m.seen_at), coalesce(o.read_at, m.read_at),
           coalesce(o.archived_at, m.archived_at), o.snoozed_until, o.interacted_at, o.action
    FROM (SELECT n.seen_at, n.read_at, n.archived_at, n.snoozed_until, n.interacted_at,
                 n.action, n.seen_v, n.read_v, n.archived_v
          WHERE n.stream = viewer
          UNION ALL
          SELECT r.seen_at, r.read_at, r.archived_at, r.snoozed_until, r.interacted_at,
                 r.action, coalesce(r.seen_v, 0), coalesce(r.read_v, 0),
                 coalesce(r.archived_v, 0)
          FROM (SELECT) one
          LEFT JOIN notifyd.receipts r ON r.ustream = viewer AND r.id = n.id
          WHERE n.stream IS DISTINCT FROM viewer) o
    LEFT JOIN LATERAL (
        SELECT (array_agg(k.at ORDER BY k.seq)
                FILTER (WHERE k.kind = 'seen' AND k.seq > o.seen_v))[1] AS seen_at,
               (array_agg(k.at ORDER BY k.seq)
                FILTER (WHERE k.kind = 'read' AND k.seq > o.read_v))[1] AS read_at,
               (array_agg(k.at ORDER BY k.seq)
                FILTER (WHERE k.kind = 'archived' AND k.seq > o.archived_v))[1] AS archived_at
        FROM notifyd.marks k
        WHERE (o.seen_at IS NULL OR o.read_at IS NULL OR o.archived_at IS NULL)
          AND k.ustream = viewer AND k.stream = n.stream AND k.upto >= n.dseq
          AND k.category IN ('', coalesce(n.category, ''))) m ON true
$$;
REVOKE ALL ON FUNCTION notifyd_private.viewer_states(notifyd.notifications, text) FROM PUBLIC;

-- As in version 8, its states from viewer_states (one definition of them).
CREATE OR REPLACE FUNCTION notifyd_private.states(
    n notifyd.notifications, viewer text, OUT seen_at timestamptz, OUT read_at timestamptz,
    OUT archived_at timestamptz, OUT snoozed_until timestamptz, OUT interacted_at timestamptz,
    OUT action text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT v.seen_at, v.read_at, v.archived_at, v.snoozed_until, v.interacted_at, v.action
    INTO seen_at, read_at, archived_at, snoozed_until, interacted_at, action
    FROM notifyd_private.viewer_states(n, viewer) v;
END
$$;
