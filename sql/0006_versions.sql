-- notifyd schema, version 6: every change is replayed (protocol version 2).
-- 1. A notification's seq is its version. An UPDATE that changes anything of a row gives it the
--    stream's next seq (BEFORE UPDATE, per row, under the stream's counter row lock, held to
--    commit as an insert holds it), so seq order is still commit order without gaps, only each
--    item's last state exists, and "what changed since my cursor" is the range scan
--    (stream, seq > cursor). dseq keeps the seq a row was delivered at (it never changes).
-- 2. A deleted notification leaves a tombstone in notifyd.removals at the stream's next seq; a
--    sync answers it as `removed`. Retention prunes tombstones as it prunes rows (same age),
--    and a cursor below what it pruned is answered with `reset`, as before. notifyd.prune() is
--    no longer executable by every role: only by the owner.
-- 3. Events: "m" for every row an UPDATE changed (the row whole), "d" with the seq of its
--    tombstone; a user stream's unread count travels on its last event of the statement ("u"),
--    as for inserts. The read-mark event "r", its "o" (origin) and the setting notifyd.origin
--    are gone: every device, the one that asked included, gets each change once, in seq order.

-- The old per-row check and the statement trigger go first: setting dseq on every existing row
-- must not announce each of them.
DROP TRIGGER notifications_forbid_move ON notifyd.notifications;
DROP TRIGGER notifications_after_update ON notifyd.notifications;
DROP FUNCTION notifyd.forbid_move();

ALTER TABLE notifyd.notifications ADD COLUMN dseq bigint;
UPDATE notifyd.notifications SET dseq = seq;
ALTER TABLE notifyd.notifications ALTER COLUMN dseq SET NOT NULL;

-- The tombstones of deleted notifications, one per row, at the seq its deletion took.
CREATE TABLE notifyd.removals (
    stream     text        NOT NULL,
    seq        bigint      NOT NULL,
    id         bigint      NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT removals_pkey PRIMARY KEY (stream, seq)
);
CREATE INDEX removals_removed_at_idx ON notifyd.removals (removed_at);

-- As in version 5, and the row's dseq is the seq it takes.
CREATE OR REPLACE FUNCTION notifyd.assign_seq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    IF NEW.role IS NOT NULL THEN
        NEW.role := notifyd.role_name(NEW.role);
    END IF;
    IF NEW.stream IS NULL THEN
        IF NEW.user_id IS NOT NULL AND NEW.role IS NULL THEN
            NEW.stream := 'user:' || NEW.user_id;
        ELSIF NEW.role IS NOT NULL AND NEW.user_id IS NULL THEN
            NEW.stream := 'role:' || NEW.role;
        ELSE
            RAISE EXCEPTION 'notifyd: a notification needs exactly one of user_id or role (or stream = ''all'')'
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF NEW.user_id = '' OR NEW.role = '' THEN
        RAISE EXCEPTION 'notifyd: user_id and role must not be empty'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NOT coalesce((NEW.stream = 'all' AND NEW.user_id IS NULL AND NEW.role IS NULL)
                    OR (NEW.user_id IS NOT NULL AND NEW.role IS NULL
                        AND NEW.stream = 'user:' || NEW.user_id)
                    OR (NEW.role IS NOT NULL AND NEW.user_id IS NULL
                        AND NEW.stream = 'role:' || NEW.role), false) THEN
        RAISE EXCEPTION 'notifyd: stream % is not the stream of this notification''s recipient (user_id, role, or neither for ''all'')',
            quote_literal(left(NEW.stream, 80))
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO notifyd.streams AS s (stream, last_seq, unread)
    VALUES (NEW.stream, 1,
            CASE WHEN NEW.user_id IS NOT NULL AND NEW.read_at IS NULL THEN 1 ELSE 0 END)
    ON CONFLICT (stream) DO UPDATE
        SET last_seq = s.last_seq + 1, unread = s.unread + EXCLUDED.unread
    RETURNING s.last_seq INTO NEW.seq;
    NEW.dseq := NEW.seq;
    RETURN NEW;
END
$$;

-- BEFORE UPDATE, per row: who a notification is for and where it was delivered never change
-- (a moved row would break seq order); a row whose columns all stay the same keeps its seq (no
-- change for clients); any other takes the stream's next seq, and the stream's unread counter
-- follows its read state.
CREATE FUNCTION notifyd.next_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    -- id too: `SET id = DEFAULT` passes GENERATED ALWAYS, and a client keeps items by id
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.stream IS DISTINCT FROM OLD.stream
       OR NEW.seq IS DISTINCT FROM OLD.seq OR NEW.dseq IS DISTINCT FROM OLD.dseq
       OR NEW.user_id IS DISTINCT FROM OLD.user_id OR NEW.role IS DISTINCT FROM OLD.role THEN
        RAISE EXCEPTION 'notifyd: id, stream, seq, dseq, user_id and role of a notification cannot change'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    UPDATE notifyd.streams
    SET last_seq = last_seq + 1,
        unread = unread + CASE WHEN NEW.user_id IS NULL THEN 0
                               ELSE (NEW.read_at IS NULL)::int - (OLD.read_at IS NULL)::int END
    WHERE stream = NEW.stream
    RETURNING last_seq INTO NEW.seq;
    RETURN NEW;
END
$$;

CREATE TRIGGER notifications_next_version
    BEFORE UPDATE ON notifyd.notifications
    FOR EACH ROW EXECUTE FUNCTION notifyd.next_version();

-- AFTER UPDATE, per statement: {"k":"m", "n": <notification>} for every row that changed (a
-- reference {"k":"m", "id", "s", "q"} when too large), by stream then seq; the last of each
-- user stream carries "u", the stream's unread count as of this commit.
CREATE OR REPLACE FUNCTION notifyd.after_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    SELECT array_agg(ev ORDER BY stream, seq) INTO events FROM (
        SELECT n.stream, n.seq,
               CASE WHEN octet_length(w::text) <= 7000
                    THEN jsonb_build_object('k', 'm', 'n', w)
                    ELSE jsonb_build_object('k', 'm', 'id', n.id, 's', n.stream, 'q', n.seq)
               END
               || CASE WHEN n.user_id IS NOT NULL
                            AND n.seq = max(n.seq) OVER (PARTITION BY n.stream)
                       THEN jsonb_build_object('u', s.unread) ELSE '{}'::jsonb END AS ev
        FROM new_rows n
        JOIN old_rows o ON o.id = n.id
        CROSS JOIN LATERAL notifyd.to_wire(n) AS w
        JOIN notifyd.streams s ON s.stream = n.stream
        WHERE n.seq <> o.seq
    ) e;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

CREATE TRIGGER notifications_after_update
    AFTER UPDATE ON notifyd.notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd.after_update();

-- AFTER DELETE, per statement: each deleted row takes its stream's next seq for its tombstone,
-- in the order of the rows' seqs, and is announced as {"k":"d", "id", "s", "q": that seq}; the
-- last of each user stream carries "u". A delete by notifyd.prune() (retention) leaves no
-- tombstone and sends only the unread counts it changed ({"k":"c", "s", "u"}).
CREATE OR REPLACE FUNCTION notifyd.after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pruning boolean := EXISTS (SELECT FROM notifyd_private.pruning
                               WHERE txid = pg_current_xact_id());
    events  jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    IF pruning THEN
        WITH deltas AS (
            UPDATE notifyd.streams s
            SET unread = s.unread - d.n
            FROM (SELECT stream, count(*) AS n FROM old_rows
                  WHERE read_at IS NULL AND user_id IS NOT NULL GROUP BY stream) d
            WHERE s.stream = d.stream
            RETURNING s.stream, s.unread
        )
        SELECT array_agg(jsonb_build_object('k', 'c', 's', stream, 'u', unread) ORDER BY stream)
        INTO events FROM deltas;
    ELSE
        WITH gone AS (
            SELECT o.stream, o.id, o.user_id IS NOT NULL AND o.read_at IS NULL AS unread,
                   row_number() OVER (PARTITION BY o.stream ORDER BY o.seq) AS i
            FROM old_rows o
        ), heads AS (
            UPDATE notifyd.streams s
            SET last_seq = s.last_seq + g.n, unread = s.unread - g.unread
            FROM (SELECT stream, count(*) AS n, count(*) FILTER (WHERE unread) AS unread
                  FROM gone GROUP BY stream) g
            WHERE s.stream = g.stream
            RETURNING s.stream, s.last_seq, s.unread, g.n
        ), stones AS (
            INSERT INTO notifyd.removals (stream, seq, id)
            SELECT g.stream, h.last_seq - h.n + g.i, g.id
            FROM gone g JOIN heads h ON h.stream = g.stream
            RETURNING stream, seq, id
        )
        SELECT array_agg(
            jsonb_build_object('k', 'd', 'id', st.id, 's', st.stream, 'q', st.seq)
            || CASE WHEN st.stream LIKE 'user:%' AND st.seq = h.last_seq
                    THEN jsonb_build_object('u', h.unread) ELSE '{}'::jsonb END
            ORDER BY st.stream, st.seq)
        INTO events
        FROM stones st JOIN heads h ON h.stream = st.stream;
    END IF;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- As in version 4, and tombstones older than `older_than` go too (the oldest first, at most
-- `batch_size` of each in a call). Every seq pruned raises its stream's pruned_below above it.
CREATE OR REPLACE FUNCTION notifyd.prune(older_than interval, batch_size integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms'
AS $$
DECLARE
    deleted integer;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' OR batch_size IS NULL
       OR batch_size < 1 THEN
        RAISE EXCEPTION 'notifyd: prune needs a non-negative interval and a positive batch size'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'notifyd: prune runs in a transaction of its own (this one has written)'
            USING ERRCODE = 'active_sql_transaction';
    END IF;
    INSERT INTO notifyd_private.pruning VALUES (pg_current_xact_id());
    WITH gone AS (
        -- = ANY (ARRAY(...)): probes the primary key per id; `IN (subquery)` was planned
        -- as a hash join scanning the whole table in every batch.
        DELETE FROM notifyd.notifications n
        WHERE n.id = ANY (ARRAY(SELECT id FROM notifyd.notifications
                                WHERE created_at < now() - older_than
                                ORDER BY created_at LIMIT batch_size
                                FOR UPDATE SKIP LOCKED))
        RETURNING n.stream, n.seq
    ), stones AS (
        DELETE FROM notifyd.removals r
        USING (SELECT stream, seq FROM notifyd.removals
               WHERE removed_at < now() - older_than
               ORDER BY removed_at LIMIT batch_size
               FOR UPDATE SKIP LOCKED) old
        WHERE r.stream = old.stream AND r.seq = old.seq
        RETURNING r.stream, r.seq
    ), floors AS (
        UPDATE notifyd.streams s
        SET pruned_below = greatest(s.pruned_below, f.max_seq + 1)
        FROM (SELECT stream, max(seq) AS max_seq
              FROM (SELECT * FROM gone UNION ALL SELECT * FROM stones) p
              GROUP BY stream) f
        WHERE s.stream = f.stream
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM stones) INTO deleted;
    DELETE FROM notifyd_private.pruning WHERE txid = pg_current_xact_id();
    RETURN deleted;
END
$$;

REVOKE ALL ON FUNCTION notifyd.next_version() FROM PUBLIC;
-- Retention's deletes are silent: only notifyd's own role (the owner) may make them. Executable
-- by everyone before, it let an app role remove any user's items unannounced.
REVOKE ALL ON FUNCTION notifyd.prune(interval, integer) FROM PUBLIC;
REVOKE ALL ON notifyd.removals FROM PUBLIC;
