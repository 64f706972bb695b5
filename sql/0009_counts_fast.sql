-- notifyd schema, version 9: counts on connect, cheaper. A shared stream that a user has
-- neither marked nor has a receipt of is counted for them as it is for everyone: its items per
-- category (one query over notifyd.shared_tallies) instead of the per-category walk of their
-- marks and receipts. notifyd.counts_many() answers the counts of many users in one statement
-- (the daemon asks for those of the connections that came in meanwhile, in one round trip).

-- As in version 7, and the short way for a stream the user has not acted on.
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
                         coalesce(r.seen_at, (array_agg(m.at ORDER BY m.seq) FILTER (
                             WHERE m.kind = 'seen' AND m.seq > r.seen_v))[1]) AS seen_at,
                         coalesce(r.read_at, (array_agg(m.at ORDER BY m.seq) FILTER (
                             WHERE m.kind = 'read' AND m.seq > r.read_v))[1]) AS read_at,
                         coalesce(r.archived_at, (array_agg(m.at ORDER BY m.seq) FILTER (
                             WHERE m.kind = 'archived' AND m.seq > r.archived_v))[1])
                             AS archived_at
                  FROM notifyd.receipts r
                  JOIN notifyd.notifications n ON n.id = r.id
                  LEFT JOIN notifyd.marks m
                         ON m.ustream = viewer AND m.stream = one AND m.upto >= n.dseq
                        AND m.category IN ('', cat)
                  WHERE r.ustream = viewer AND n.stream = one AND coalesce(n.category, '') = cat
                  GROUP BY r.id, n.dseq, r.snoozed_until, r.seen_at, r.seen_v, r.read_at,
                           r.read_v, r.archived_at, r.archived_v) w;
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

-- The counts of many users at once: `asked` is a JSON array of [viewer, [stream, ...]]; the
-- rows are notifyd.counts()'s, each with the place of its user in the array (from 1). One
-- statement, one snapshot, one round trip. (notifyd.counts() per user: each of its queries is
-- an index probe. A set-based form joined the users to the counter tables, and on a busy
-- database, whose counter rows are rewritten at every insert, took a hash join over all of
-- them.)
CREATE FUNCTION notifyd.counts_many(asked jsonb)
RETURNS TABLE (i bigint, stream text, last_seq bigint, category text, unread bigint,
               unseen bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.i, c.stream, c.last_seq, c.category, c.unread, c.unseen
    FROM jsonb_array_elements(asked) WITH ORDINALITY a(v, i)
    CROSS JOIN LATERAL notifyd.counts(
        a.v ->> 0, ARRAY(SELECT jsonb_array_elements_text(a.v -> 1))) c
$$;
REVOKE ALL ON FUNCTION notifyd.counts_many(jsonb) FROM PUBLIC;
