-- notifyd schema, version 3: what operations need.
-- 1. Insert events carry "t", the moment the inserting statement ended (clock_timestamp(), in
--    seconds since the epoch): the start of the daemon's commit-to-send latency histogram.
-- 2. notifyd.prune(): retention in small batches. Pruned rows are not announced to clients as
--    deleted (they are simply old); unread counts that change are. A cursor below what is
--    kept is answered with the stream in `reset` (streams.pruned_below).

CREATE OR REPLACE FUNCTION notifyd.after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    events jsonb[];
    t      float8 := extract(epoch FROM clock_timestamp());
BEGIN
    SELECT array_agg(
        CASE WHEN octet_length(w::text) <= 7000
             THEN jsonb_build_object('k', 'n', 'n', w, 'u', s.unread, 't', t)
             ELSE jsonb_build_object('k', 'n', 'id', r.id, 's', r.stream, 'q', r.seq,
                                     'u', s.unread, 't', t)
        END ORDER BY r.stream, r.seq)
    INTO events
    FROM new_rows r
    CROSS JOIN LATERAL notifyd.to_wire(r) AS w
    JOIN notifyd.streams s ON s.stream = r.stream;
    PERFORM notifyd.send_events(events);
    RETURN NULL;
END
$$;

-- As in version 1, but a delete made by notifyd.prune() (notifyd.pruning = 'on' in its
-- transaction) sends only the changed unread counts, not one `deleted` event per old row.
CREATE OR REPLACE FUNCTION notifyd.after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pruning boolean := coalesce(current_setting('notifyd.pruning', true), '') = 'on';
    events  jsonb[];
BEGIN
    WITH deltas AS (
        UPDATE notifyd.streams s
        SET unread = s.unread - d.n
        FROM (SELECT stream, count(*) AS n FROM old_rows
              WHERE read_at IS NULL AND user_id IS NOT NULL GROUP BY stream) d
        WHERE s.stream = d.stream
        RETURNING s.stream, s.unread
    )
    SELECT array_agg(ev ORDER BY ord) INTO events FROM (
        SELECT jsonb_build_object('k', 'd', 'id', o.id, 's', o.stream) AS ev, 1 AS ord
        FROM old_rows o
        WHERE NOT pruning
        UNION ALL
        SELECT jsonb_build_object('k', 'c', 's', d.stream, 'u', d.unread), 2
        FROM deltas d
    ) e;
    PERFORM notifyd.send_events(events);
    RETURN NULL;
END
$$;

-- Deletes at most `batch_size` notifications created before now() - `older_than`, oldest
-- first, in the caller's transaction, and returns how many it deleted (0: nothing left).
-- Call it repeatedly, one short transaction per call, until it returns 0; the daemon does so
-- when NOTIFYD_RETENTION_DAYS is set. Rows locked by other transactions are skipped, and a
-- call that would wait more than 200 ms for a stream's counter row gives up with an error
-- (lock_not_available; retry later) rather than make an app's transaction wait long or become
-- a deadlock victim (lock_timeout is below deadlock_timeout's default of 1 s).
-- The SET clauses hold only while the function runs (PostgreSQL restores the caller's values,
-- also on error); the AFTER DELETE trigger fires inside it and sees notifyd.pruning.
CREATE FUNCTION notifyd.prune(older_than interval, batch_size integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '200ms'
SET notifyd.pruning = 'on'
AS $$
DECLARE
    deleted integer;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' OR batch_size IS NULL
       OR batch_size < 1 THEN
        RAISE EXCEPTION 'notifyd: prune needs a non-negative interval and a positive batch size'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH gone AS (
        -- = ANY (ARRAY(...)): probes the primary key per id; `IN (subquery)` was planned
        -- as a hash join scanning the whole table in every batch.
        DELETE FROM notifyd.notifications n
        WHERE n.id = ANY (ARRAY(SELECT id FROM notifyd.notifications
                                WHERE created_at < now() - older_than
                                ORDER BY created_at LIMIT batch_size
                                FOR UPDATE SKIP LOCKED))
        RETURNING n.stream, n.seq
    ), floors AS (
        UPDATE notifyd.streams s
        SET pruned_below = greatest(s.pruned_below, f.max_seq + 1)
        FROM (SELECT stream, max(seq) AS max_seq FROM gone GROUP BY stream) f
        WHERE s.stream = f.stream
        RETURNING 1
    )
    SELECT count(*) INTO deleted FROM gone;
    RETURN deleted;
END
$$;
