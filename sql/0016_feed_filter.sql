-- notifyd schema, version 16: a feed page decides which items pass its filter from the item's
-- own row or receipt and the user's latest marks, and reads an item's states only for the
-- items it returns.
-- notifyd.feed() read each item's states (notifyd_private.states: a statement of its own per
-- item, which reads every mark covering the item) to decide whether it passes the filter. A
-- filter that passes few items looked at up to `scan` of them: the unread tab of a user who
-- marked everything read took 110 to 230 ms a page to answer that there was nothing (bench/
-- feed.py, 1,000,000 items in `all`, after some 600 mark rows).
-- Whether any of the user's marks gives an item a state needs no search for the first of them:
-- a mark's `upto` never decreases along the user's seq (version 15), so among the marks of
-- one stream, kind and category, the latest has both the highest seq and the highest upto,
-- and a mark covering the item (upto at or above its dseq) made after its version (seq above
-- it) exists exactly when the latest one is such a mark: one index probe per kind and
-- category, in the page's own query for every item of a round.
-- 1. notifyd_private.marked(): that test, SQL returning a set (inlined into the query).
-- 2. notifyd.feed(): each round reads its items as before, then one query gives each of them
--    whether it passes and, for those it returns, their states: each its own row's or
--    receipt's, else notifyd_private.first_mark()'s (as the counts read them; held to
--    notifyd_private.viewer_states, the definition, by tests/test_marks.py). The two queries
--    are apart so that each keeps a plan that holds for any values: in one, the generic plan
--    read the items by time across all streams (some 60 ms a round, against 1 ms). A round
--    reads max(`lim`, 10) items of each stream, then twice as many as the round before, up to
--    200: a filter that passes few takes fewer rounds to look at `scan` items. (The bounds are
--    version 8's; with five streams or more, where 4 x `scan` index rows are read before
--    `scan` items are looked at, a page cut by them ends at another item than before.)
--    Its queries run with enable_seqscan off: each is index probes and keyset reads, and
--    PL/pgSQL keeps the plans a session made first. Made while `notifyd.marks` was nearly
--    empty (a new database, or before its autovacuum), they read the whole table at every
--    probe once it had grown: pages of a user with 609 mark rows took 4.8 ms, and the unread
--    tab that finds none 132 ms, against 1.3 and 19 ms (bench/feed.py --quick).

-- Whether one of `viewer`'s marks of `kind` on `stream`, of `category` ('' for none) or of
-- every category, covers an item at `dseq` and was made after `after` (the item's version of
-- that state): one row, true or false.
CREATE OR REPLACE FUNCTION notifyd_private.marked(
    viewer text, stream text, kind text, category text, dseq bigint, after bigint
) RETURNS TABLE (yes boolean)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(bool_or(l.upto >= marked.dseq AND l.seq > marked.after), false)
    FROM (SELECT '' UNION ALL SELECT marked.category WHERE marked.category <> '') c(category)
    CROSS JOIN LATERAL (
        SELECT m.seq, m.upto FROM notifyd.marks m
        WHERE m.ustream = marked.viewer AND m.stream = marked.stream
          AND m.kind = marked.kind AND m.category = c.category
        ORDER BY m.seq DESC LIMIT 1) l
$$;
REVOKE ALL ON FUNCTION notifyd_private.marked(text, text, text, text, bigint, bigint)
    FROM PUBLIC;

-- As in version 8: the same arguments, items and order, and the same bounds (`scan` items
-- looked at, or 4 x `scan` rows read from the streams' indexes). A NULL `state` is `all`, as
-- before.
CREATE OR REPLACE FUNCTION notifyd.feed(
    viewer text, streams text[], state text DEFAULT 'all', category text DEFAULT NULL,
    before_at timestamptz DEFAULT NULL, before_id bigint DEFAULT NULL, lim integer DEFAULT 20,
    scan integer DEFAULT 1000
) RETURNS TABLE (id bigint, created_at timestamptz, notification jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    chunk    integer := least(greatest(lim, 10), 200);
    ways     integer := greatest(coalesce(cardinality(streams), 0), 1);
    reads    integer := 0;
    cur_at   timestamptz := coalesce(before_at, 'infinity');
    cur_id   bigint := coalesce(before_id, 9223372036854775807);
    looked   integer := 0;
    found    integer := 0;
    got      integer;
    item     notifyd.notifications;
    batch    notifyd.notifications[];
    r        record;
BEGIN
    state := coalesce(state, 'all');
    IF state NOT IN ('all', 'unread', 'unseen', 'archived') THEN
        RAISE EXCEPTION 'notifyd: a feed''s state is all, unread, unseen or archived'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        got := 0;
        reads := reads + ways * chunk;
        SELECT array_agg(l.n ORDER BY (l.n).created_at DESC, (l.n).id DESC) INTO batch
        FROM (SELECT l.n FROM unnest(streams) st(s)
              CROSS JOIN LATERAL (
                  SELECT n FROM notifyd.notifications n
                  WHERE n.stream = st.s AND n.seq IS NOT NULL
                    AND (n.created_at, n.id) < (cur_at, cur_id)
                  ORDER BY n.created_at DESC, n.id DESC LIMIT chunk) l
              ORDER BY (l.n).created_at DESC, (l.n).id DESC LIMIT chunk) l;
        FOR r IN
            -- an item's states, for the items this page returns (those that pass, up to what
            -- the page still needs, within what it may still look at): each one its own row's
            -- or receipt's, else the first of the user's marks after its version that covers
            -- it. (Not looked up: the state the filter says an item has not.)
            SELECT k.i, k.keep, k.snoozed_until, k.interacted_at, k.action,
                   CASE WHEN k.returned AND state <> 'unseen' THEN coalesce(k.seen_at, (
                       SELECT f.at FROM notifyd_private.first_mark(
                           viewer, k.stream, 'seen', k.category, k.dseq, k.seen_v) f)) END
                       AS seen_at,
                   CASE WHEN k.returned AND state <> 'unread' THEN coalesce(k.read_at, (
                       SELECT f.at FROM notifyd_private.first_mark(
                           viewer, k.stream, 'read', k.category, k.dseq, k.read_v) f)) END
                       AS read_at,
                   CASE WHEN k.returned AND state = 'archived' THEN coalesce(k.archived_at, (
                       SELECT f.at FROM notifyd_private.first_mark(
                           viewer, k.stream, 'archived', k.category, k.dseq, k.archived_v) f))
                       END AS archived_at
            FROM (SELECT k.*, k.keep AND k.i <= scan - looked
                              AND count(*) FILTER (WHERE k.keep) OVER (ORDER BY k.i)
                                  <= lim - found AS returned
                  FROM (
                      SELECT b.ordinality::integer AS i, b.stream, b.dseq, o.*,
                             -- (the category here, not in the scan: a rare one counts against
                             -- `scan` too; each state's marks are looked up only when the filter
                             -- asks it)
                             (feed.category IS NULL OR b.category = feed.category)
                             AND coalesce(b.expires_at > now(), true)
                             AND o.snoozed_until IS NULL
                             AND CASE WHEN o.archived_at IS NOT NULL THEN state = 'archived'
                                      ELSE (SELECT a.yes FROM notifyd_private.marked(
                                                viewer, b.stream, 'archived', o.category,
                                                b.dseq, o.archived_v) a) = (state = 'archived')
                                 END
                             AND CASE state
                                 WHEN 'unread' THEN o.read_at IS NULL AND NOT (
                                     SELECT a.yes FROM notifyd_private.marked(
                                         viewer, b.stream, 'read', o.category, b.dseq,
                                         o.read_v) a)
                                 WHEN 'unseen' THEN o.seen_at IS NULL AND NOT (
                                     SELECT a.yes FROM notifyd_private.marked(
                                         viewer, b.stream, 'seen', o.category, b.dseq,
                                         o.seen_v) a)
                                 ELSE true END AS keep
                      FROM unnest(batch) WITH ORDINALITY b
                      -- the item's own states: its row's when it is the viewer's, else the
                      -- receipt's (or none)
                      CROSS JOIN LATERAL (
                          SELECT coalesce(b.category, '') AS category, x.seen_at, x.read_at,
                                 x.archived_at, x.snoozed_until, x.interacted_at, x.action,
                                 x.seen_v, x.read_v, x.archived_v
                          FROM (SELECT b.seen_at, b.read_at, b.archived_at, b.snoozed_until,
                                       b.interacted_at, b.action, b.seen_v, b.read_v, b.archived_v
                                WHERE b.stream = viewer
                                UNION ALL
                                SELECT rc.seen_at, rc.read_at, rc.archived_at, rc.snoozed_until,
                                       rc.interacted_at, rc.action, coalesce(rc.seen_v, 0),
                                       coalesce(rc.read_v, 0), coalesce(rc.archived_v, 0)
                                FROM (SELECT) one
                                LEFT JOIN notifyd.receipts rc
                                    ON rc.ustream = viewer AND rc.id = b.id
                                WHERE b.stream IS DISTINCT FROM viewer) x) o
                      OFFSET 0) k) k  -- (each item's test made once)
            ORDER BY k.i
        LOOP
            item := batch[r.i];
            got := got + 1;
            looked := looked + 1;
            cur_at := item.created_at;
            cur_id := item.id;
            IF r.keep THEN
                id := item.id;
                created_at := item.created_at;
                notification := notifyd.wire_of(item, r.seen_at, r.read_at, r.archived_at,
                                                r.snoozed_until, r.interacted_at, r.action);
                RETURN NEXT;
                found := found + 1;
                IF found >= lim THEN
                    RETURN;
                END IF;
            END IF;
            EXIT WHEN looked >= scan;
        END LOOP;
        IF looked >= scan OR (got = chunk AND reads >= 4 * scan) THEN
            id := cur_id;  -- where the next page goes on from
            created_at := cur_at;
            notification := NULL;
            RETURN NEXT;
            RETURN;
        END IF;
        IF got < chunk THEN
            RETURN;  -- the end of the feed
        END IF;
        chunk := least(chunk * 2, 200);  -- a filter that passes few: fewer, larger rounds
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION notifyd.feed(text, text[], text, text, timestamptz, bigint, integer,
                                    integer) FROM PUBLIC;
