-- notifyd schema, version 8: what an item can do in the feed. Grouping, expiry, scheduled
-- delivery, actions, and pages of the feed newest first.
-- 1. Scheduled delivery: a row inserted with `deliver_at` in the future is pending. It has no
--    seq and no dseq yet: it is not sent, not counted, not in a sync or a page. When its time
--    comes (notifyd.deliver(), run by one daemon at a time), it takes the next seq of its
--    stream, like a new row, and is announced as new ("n"). Its created_at is then the time of
--    delivery. Deleting it before then cancels it, silently.
-- 2. Expiry: a row whose `expires_at` has passed is deleted by notifyd.expire() (one daemon at
--    a time), which announces it once, as any delete is: a tombstone, "removed" on sync.
-- 3. Grouping: a row of a user's own stream inserted with a `group_key` collapses into the
--    newest item of that stream with the same key that its user has neither read nor
--    archived. That item takes the new row's content, counts one more (group_count), keeps
--    the 10 latest distinct `actors`, moves to the top (a new dseq and created_at), becomes
--    unseen again and is announced as changed ("m"). The new row is not inserted (INSERT ...
--    RETURNING gives no row; notifyd.notify() returns the group's id). Writers of one key
--    take turns (an advisory lock), so none is lost and none makes a second group.
-- 4. Actions: `actions`, up to 3 of {id, label, url?}; notifyd.act() records that a user took
--    one (interacted_at and action, the user's state like read: in the row of an own item,
--    in the user's receipt of a shared one).
-- 5. notifyd.feed(): a user's items over their streams, newest first (created_at, id), by
--    state and category, a page at a time from a cursor (keyset: as fast at any depth).

ALTER TABLE notifyd.notifications
    ALTER COLUMN seq DROP NOT NULL,
    ALTER COLUMN dseq DROP NOT NULL,
    ADD COLUMN deliver_at    timestamptz,
    ADD COLUMN expires_at    timestamptz,
    ADD COLUMN group_key     text,
    ADD COLUMN actor         text,
    ADD COLUMN actors        text[]      NOT NULL DEFAULT '{}',
    ADD COLUMN group_count   integer     NOT NULL DEFAULT 1,
    ADD COLUMN actions       jsonb       NOT NULL DEFAULT '[]',
    ADD COLUMN interacted_at timestamptz,
    ADD COLUMN action        text;
ALTER TABLE notifyd.receipts
    ADD COLUMN interacted_at timestamptz,
    ADD COLUMN action        text;

-- Up to 3 actions, each {id, label, url?}: ids of 1 to 64 characters, distinct; labels of 1 to
-- 100; urls of 1 to 2048, http(s) or a path (never javascript: or data:, which a client would
-- run when the user clicks), without spaces or control characters (a browser drops a tab or a
-- newline, and "/<tab>/evil.example" becomes another site).
CREATE OR REPLACE FUNCTION notifyd_private.valid_actions(actions jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_typeof(actions) = 'array' AND jsonb_array_length(actions) <= 3
       AND NOT EXISTS (
           SELECT FROM jsonb_array_elements(actions) a
           WHERE NOT coalesce(
               jsonb_typeof(a) = 'object'
               AND a - 'id' - 'label' - 'url' = '{}'
               AND jsonb_typeof(a -> 'id') = 'string'
               AND char_length(a ->> 'id') BETWEEN 1 AND 64
               AND jsonb_typeof(a -> 'label') = 'string'
               AND char_length(a ->> 'label') BETWEEN 1 AND 100
               AND (NOT a ? 'url'
                    OR (jsonb_typeof(a -> 'url') = 'string'
                        AND char_length(a ->> 'url') BETWEEN 1 AND 2048
                        AND a ->> 'url' !~ '[\x01-\x20\x7f]'
                        AND (a ->> 'url' ~* '^https?://' OR a ->> 'url' ~ '^/([^/\\]|$)'))),
               false))
       AND (SELECT count(DISTINCT a ->> 'id') FROM jsonb_array_elements(actions) a)
           = jsonb_array_length(actions)
$$;

ALTER TABLE notifyd.notifications
    ADD CONSTRAINT notifications_actions_check CHECK (notifyd_private.valid_actions(actions)),
    ADD CONSTRAINT notifications_group_key_check CHECK (char_length(group_key) BETWEEN 1 AND 128),
    ADD CONSTRAINT notifications_actor_check CHECK (char_length(actor) BETWEEN 1 AND 256),
    ADD CONSTRAINT notifications_actors_check CHECK (cardinality(actors) <= 10),
    ADD CONSTRAINT notifications_group_count_check CHECK (group_count >= 1),
    ADD CONSTRAINT notifications_group_shared_check CHECK (group_key IS NULL OR user_id IS NOT NULL),
    ADD CONSTRAINT notifications_expiry_check CHECK (expires_at > deliver_at),
    ADD CONSTRAINT notifications_action_check CHECK (char_length(action) BETWEEN 1 AND 64),
    ADD CONSTRAINT notifications_created_at_check CHECK (isfinite(created_at)) NOT VALID,
    ADD CONSTRAINT notifications_shared_action_check
        CHECK (user_id IS NOT NULL OR (interacted_at IS NULL AND action IS NULL));

-- Pages of a stream newest first; the groups of a stream; what is due.
CREATE INDEX notifications_feed_idx ON notifyd.notifications (stream, created_at, id)
    WHERE seq IS NOT NULL;
CREATE INDEX notifications_group_idx ON notifyd.notifications (stream, group_key, dseq)
    WHERE group_key IS NOT NULL;
CREATE INDEX notifications_pending_idx ON notifyd.notifications (deliver_at, id)
    WHERE seq IS NULL;
CREATE INDEX notifications_expiry_idx ON notifyd.notifications (expires_at)
    WHERE expires_at IS NOT NULL;

-- The protocol's Notification object of a row with the given states of its user.
-- (to_wire keeps its signatures, and so the grants an operator gave on it.)
DROP FUNCTION notifyd.wire_of(notifyd.notifications, timestamptz, timestamptz, timestamptz,
                              timestamptz);
CREATE FUNCTION notifyd.wire_of(
    n notifyd.notifications, seen_at timestamptz, read_at timestamptz,
    archived_at timestamptz, snoozed_until timestamptz, interacted_at timestamptz, action text
) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', n.id, 'stream', n.stream, 'seq', n.seq, 'deliveredSeq', n.dseq, 'type', n.type,
        'category', n.category, 'title', n.title, 'message', n.message, 'data', n.data,
        'priority', n.priority, 'actionUrl', n.action_url, 'actions', n.actions,
        'groupKey', n.group_key, 'groupCount', n.group_count, 'actors', to_jsonb(n.actors),
        'seen', seen_at IS NOT NULL, 'seenAt', notifyd.wire_time(seen_at),
        'read', read_at IS NOT NULL, 'readAt', notifyd.wire_time(read_at),
        'archived', archived_at IS NOT NULL, 'archivedAt', notifyd.wire_time(archived_at),
        'snoozedUntil', notifyd.wire_time(snoozed_until),
        'interactedAt', notifyd.wire_time(interacted_at), 'action', action,
        'expiresAt', notifyd.wire_time(n.expires_at),
        'createdAt', notifyd.wire_time(n.created_at))
$$;

CREATE OR REPLACE FUNCTION notifyd.to_wire(n notifyd.notifications) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT notifyd.wire_of(n, n.seen_at, n.read_at, n.archived_at, n.snoozed_until,
                           n.interacted_at, n.action)
$$;

-- As in version 7, and the user's interaction (interacted_at, action).
DROP FUNCTION IF EXISTS notifyd_private.states(notifyd.notifications, text);
CREATE OR REPLACE FUNCTION notifyd_private.states(
    n notifyd.notifications, viewer text, OUT seen_at timestamptz, OUT read_at timestamptz,
    OUT archived_at timestamptz, OUT snoozed_until timestamptz, OUT interacted_at timestamptz,
    OUT action text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    seen_v     bigint := 0;
    read_v     bigint := 0;
    archived_v bigint := 0;
BEGIN
    IF n.stream = viewer THEN
        seen_at := n.seen_at; read_at := n.read_at; archived_at := n.archived_at;
        snoozed_until := n.snoozed_until; interacted_at := n.interacted_at; action := n.action;
        seen_v := n.seen_v; read_v := n.read_v; archived_v := n.archived_v;
    ELSE
        SELECT r.seen_at, r.read_at, r.archived_at, r.snoozed_until, r.interacted_at, r.action,
               r.seen_v, r.read_v, r.archived_v
        INTO seen_at, read_at, archived_at, snoozed_until, interacted_at, action,
             seen_v, read_v, archived_v
        FROM notifyd.receipts r WHERE r.ustream = viewer AND r.id = n.id;
        seen_v := coalesce(seen_v, 0);
        read_v := coalesce(read_v, 0);
        archived_v := coalesce(archived_v, 0);
    END IF;
    IF seen_at IS NULL OR read_at IS NULL OR archived_at IS NULL THEN
        SELECT coalesce(seen_at, (array_agg(m.at ORDER BY m.seq)
                                  FILTER (WHERE m.kind = 'seen' AND m.seq > seen_v))[1]),
               coalesce(read_at, (array_agg(m.at ORDER BY m.seq)
                                  FILTER (WHERE m.kind = 'read' AND m.seq > read_v))[1]),
               coalesce(archived_at, (array_agg(m.at ORDER BY m.seq)
                                      FILTER (WHERE m.kind = 'archived' AND m.seq > archived_v))[1])
        INTO seen_at, read_at, archived_at
        FROM notifyd.marks m
        WHERE m.ustream = viewer AND m.stream = n.stream AND m.upto >= n.dseq
          AND m.category IN ('', coalesce(n.category, ''));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION notifyd.to_wire(n notifyd.notifications, viewer text) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM notifyd_private.states(n, viewer);
    RETURN notifyd.wire_of(n, s.seen_at, s.read_at, s.archived_at, s.snoozed_until,
                           s.interacted_at, s.action);
END
$$;

-- As in version 7, and: a row due later is pending (no seq, not counted); a row with a
-- group_key collapses into its group (see 3 above) and is not inserted.
CREATE OR REPLACE FUNCTION notifyd.assign_seq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target bigint;
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
    IF NEW.expires_at <= now() THEN
        RAISE EXCEPTION 'notifyd: expires_at % has passed', NEW.expires_at
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.seen_v := 0;
    NEW.read_v := 0;
    NEW.archived_v := 0;
    NEW.group_count := 1;
    NEW.actors := CASE WHEN NEW.actor IS NOT NULL THEN ARRAY[NEW.actor] ELSE '{}' END;
    IF NEW.deliver_at > now() THEN
        IF NEW.group_key IS NOT NULL THEN
            RAISE EXCEPTION 'notifyd: a scheduled notification (deliver_at) cannot have a group_key'
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.seq := NULL;
        NEW.dseq := NULL;
        RETURN NEW;
    END IF;
    IF NEW.group_key IS NOT NULL AND NEW.user_id IS NOT NULL THEN
        -- One writer of a group at a time: the next sees the group this one made or grew.
        PERFORM pg_advisory_xact_lock(
            hashtextextended(NEW.stream || chr(31) || NEW.group_key, 2026));
        SELECT n.id INTO target FROM notifyd.notifications n
        CROSS JOIN LATERAL notifyd_private.states(n, n.stream) w
        WHERE n.stream = NEW.stream AND n.group_key = NEW.group_key AND n.dseq IS NOT NULL
          AND w.read_at IS NULL AND w.archived_at IS NULL
        ORDER BY n.dseq DESC LIMIT 1
        FOR UPDATE OF n;
        IF target IS NOT NULL AND position(
                chr(30) || target::text || chr(30)
                IN coalesce(current_setting('notifyd.fresh_groups', true), '')) > 0 THEN
            -- its group is a row of this very statement, not announced yet: its change would
            -- be announced before it
            RAISE EXCEPTION 'notifyd: two rows of one INSERT with the same group_key % for %: insert them in separate statements',
                quote_literal(left(NEW.group_key, 80)), quote_literal(left(NEW.stream, 80))
                USING ERRCODE = 'check_violation';
        END IF;
        IF target IS NOT NULL THEN
            UPDATE notifyd.notifications n SET
                type = NEW.type, title = NEW.title, message = NEW.message, data = NEW.data,
                priority = NEW.priority, action_url = NEW.action_url, actions = NEW.actions,
                category = NEW.category, actor = NEW.actor,
                -- the later of the two (none if either has none): a short-lived row does not
                -- take the whole group with it
                expires_at = CASE WHEN n.expires_at IS NULL OR NEW.expires_at IS NULL THEN NULL
                                  ELSE greatest(n.expires_at, NEW.expires_at) END,
                actors = CASE WHEN NEW.actor IS NULL THEN n.actors
                              ELSE (ARRAY[NEW.actor] || array_remove(n.actors, NEW.actor))[1:10]
                         END,
                group_count = n.group_count + 1, created_at = NEW.created_at,
                seen_at = NULL, seen_v = -1, snoozed_until = NULL,
                dseq = -1  -- to the top: next_version gives it its new seq
            WHERE n.id = target;
            PERFORM set_config('notifyd.grouped_into', target::text, true);
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO notifyd.streams AS s (stream, last_seq) VALUES (NEW.stream, 1)
    ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + 1
    RETURNING s.last_seq INTO NEW.seq;
    NEW.dseq := NEW.seq;
    IF NEW.user_id IS NOT NULL THEN
        NEW.seen_at := coalesce(NEW.seen_at, NEW.read_at);
    END IF;
    IF NEW.group_key IS NOT NULL THEN  -- a new group, announced when the statement ends
        PERFORM set_config('notifyd.fresh_groups',
            coalesce(current_setting('notifyd.fresh_groups', true), '') || chr(30)
            || NEW.id::text || chr(30), true);
    END IF;
    PERFORM notifyd_private.counted(NEW);
    RETURN NEW;
END
$$;

-- A row delivered (inserted, or pending until now) counts: in its user stream's tallies, or
-- its shared stream's runs.
CREATE OR REPLACE FUNCTION notifyd_private.counted(n notifyd.notifications) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF n.user_id IS NOT NULL THEN
        PERFORM notifyd_private.tally(n.stream, n.category,
            (n.read_at IS NULL AND n.archived_at IS NULL AND n.snoozed_until IS NULL)::int,
            (n.seen_at IS NULL AND n.archived_at IS NULL AND n.snoozed_until IS NULL)::int);
    ELSE
        PERFORM notifyd_private.shared_tally(n.stream, n.category, n.dseq, 1);
    END IF;
END
$$;

-- As in version 7, and: a pending row stays pending (no seq, no event) until its deliver_at
-- has come, when it takes the next seq as a new row does; dseq = -1 moves an own item to the
-- top of its stream (its new seq; how a group grows).
CREATE OR REPLACE FUNCTION notifyd.next_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    before record;
    after  record;
    top    boolean := NEW.dseq = -1 AND OLD.dseq IS NOT NULL AND OLD.user_id IS NOT NULL;
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    IF top THEN
        NEW.dseq := OLD.dseq;
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.stream IS DISTINCT FROM OLD.stream
       OR NEW.seq IS DISTINCT FROM OLD.seq OR NEW.dseq IS DISTINCT FROM OLD.dseq
       OR NEW.user_id IS DISTINCT FROM OLD.user_id OR NEW.role IS DISTINCT FROM OLD.role THEN
        RAISE EXCEPTION 'notifyd: id, stream, seq, dseq, user_id and role of a notification cannot change'
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.seq IS NULL THEN
        IF NEW.group_key IS NOT NULL THEN
            RAISE EXCEPTION 'notifyd: a scheduled notification (deliver_at) cannot have a group_key'
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.deliver_at > now() THEN
            RETURN NEW;  -- still pending
        END IF;
        INSERT INTO notifyd.streams AS s (stream, last_seq) VALUES (NEW.stream, 1)
        ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + 1
        RETURNING s.last_seq INTO NEW.seq;
        NEW.dseq := NEW.seq;
        NEW.created_at := now();
        NEW.seen_v := 0;
        NEW.read_v := 0;
        NEW.archived_v := 0;
        IF NEW.user_id IS NOT NULL THEN
            NEW.seen_at := coalesce(NEW.seen_at, NEW.read_at);
        END IF;
        PERFORM notifyd_private.counted(NEW);
        RETURN NEW;
    END IF;
    IF NEW IS NOT DISTINCT FROM OLD AND NOT top THEN
        RETURN NEW;
    END IF;
    UPDATE notifyd.streams SET last_seq = last_seq + 1 WHERE stream = NEW.stream
    RETURNING last_seq INTO NEW.seq;
    IF top THEN
        NEW.dseq := NEW.seq;
    END IF;
    IF NEW.user_id IS NOT NULL THEN
        IF NEW.read_at IS NOT NULL AND NEW.seen_at IS NULL AND OLD.read_at IS NULL THEN
            NEW.seen_at := NEW.read_at;
        END IF;
        NEW.seen_v := CASE WHEN NEW.seen_at IS DISTINCT FROM OLD.seen_at
                             OR NEW.seen_v <> OLD.seen_v THEN NEW.seq ELSE OLD.seen_v END;
        NEW.read_v := CASE WHEN NEW.read_at IS DISTINCT FROM OLD.read_at
                             OR NEW.read_v <> OLD.read_v THEN NEW.seq ELSE OLD.read_v END;
        NEW.archived_v := CASE WHEN NEW.archived_at IS DISTINCT FROM OLD.archived_at
                                 OR NEW.archived_v <> OLD.archived_v
                               THEN NEW.seq ELSE OLD.archived_v END;
        before := notifyd_private.share(OLD);
        after := notifyd_private.share(NEW);
        IF OLD.category IS NOT DISTINCT FROM NEW.category THEN
            PERFORM notifyd_private.tally(NEW.stream, NEW.category,
                                          after.unread - before.unread, after.unseen - before.unseen);
        ELSE
            PERFORM notifyd_private.tally(OLD.stream, OLD.category, -before.unread, -before.unseen);
            PERFORM notifyd_private.tally(NEW.stream, NEW.category, after.unread, after.unseen);
        END IF;
    ELSE
        NEW.seen_v := 0;
        NEW.read_v := 0;
        NEW.archived_v := 0;
        IF OLD.category IS DISTINCT FROM NEW.category THEN
            PERFORM notifyd_private.shared_tally(OLD.stream, OLD.category, OLD.dseq, -1);
            PERFORM notifyd_private.shared_tally(NEW.stream, NEW.category, NEW.dseq, 1);
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- The events of rows delivered ("n"): {"k":"n", "n": wire, "t": when} (a reference {"k":"n",
-- "id", "s", "q", "t", "c": category} when too large). `own`: of a user stream.
CREATE OR REPLACE FUNCTION notifyd_private.new_events(delivered notifyd.notifications[], t float8)
RETURNS TABLE (stream text, seq bigint, own boolean, ev jsonb)
LANGUAGE sql STABLE AS $$
    SELECT r.stream, r.seq, r.user_id IS NOT NULL,
           CASE WHEN octet_length(w::text) <= 7000
                THEN jsonb_build_object('k', 'n', 'n', w, 't', t)
                ELSE jsonb_build_object('k', 'n', 'id', r.id, 's', r.stream, 'q', r.seq, 't', t,
                                        'c', r.category)
           END
    FROM unnest(delivered) r
    CROSS JOIN LATERAL notifyd.to_wire(r) AS w
$$;

-- Events in stream and seq order, the last of each user stream with "u", its tallies.
CREATE OR REPLACE FUNCTION notifyd_private.with_tallies(stream text, seq bigint, own boolean, ev jsonb,
                                             last boolean)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN own AND last
                THEN ev || jsonb_build_object('u', notifyd_private.tallies(stream))
                ELSE ev END
$$;

-- AFTER INSERT, per statement: as in version 7; pending rows are not announced.
CREATE OR REPLACE FUNCTION notifyd.after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    PERFORM set_config('notifyd.fresh_groups', '', true);  -- announced below
    SELECT array_agg(notifyd_private.with_tallies(e.stream, e.seq, e.own, e.ev, e.last)
                     ORDER BY e.stream, e.seq)
    INTO events
    FROM (SELECT d.*, d.seq = max(d.seq) OVER (PARTITION BY d.stream) AS last
          FROM notifyd_private.new_events(ARRAY(SELECT r::notifyd.notifications FROM new_rows r
                                                WHERE r.seq IS NOT NULL),
                                          extract(epoch FROM clock_timestamp())::float8) d) e;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- AFTER UPDATE, per statement: as in version 7; a pending row delivered now is announced as
-- new ("n"), one still pending not at all.
CREATE OR REPLACE FUNCTION notifyd.after_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    SELECT array_agg(notifyd_private.with_tallies(e.stream, e.seq, e.own, e.ev, e.last)
                     ORDER BY e.stream, e.seq)
    INTO events
    FROM (SELECT d.*, d.seq = max(d.seq) OVER (PARTITION BY d.stream) AS last FROM (
              SELECT n.stream, n.seq, n.user_id IS NOT NULL AS own,
                     CASE WHEN octet_length(w::text) <= 7000
                          THEN jsonb_build_object('k', 'm', 'n', w)
                          ELSE jsonb_build_object('k', 'm', 'id', n.id, 's', n.stream, 'q', n.seq)
                     END AS ev
              FROM new_rows n
              JOIN old_rows o ON o.id = n.id
              CROSS JOIN LATERAL (SELECT CASE WHEN n.user_id IS NOT NULL
                                              THEN notifyd.to_wire(n, n.stream)
                                              ELSE notifyd.to_wire(n) END AS w) v
              WHERE n.seq <> o.seq
              UNION ALL
              SELECT * FROM notifyd_private.new_events(
                  ARRAY(SELECT n::notifyd.notifications FROM new_rows n
                        JOIN old_rows o ON o.id = n.id WHERE o.seq IS NULL AND n.seq IS NOT NULL),
                  extract(epoch FROM clock_timestamp())::float8)) d) e;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- AFTER DELETE, per statement: as in version 7; a pending row goes silently (it was never
-- delivered: nothing counts it, no client has it).
CREATE OR REPLACE FUNCTION notifyd.after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pruning boolean := EXISTS (SELECT FROM notifyd_private.pruning
                               WHERE txid = pg_current_xact_id());
    events  jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    PERFORM notifyd_private.tally(o.stream, o.category, -sum(s.unread)::int, -sum(s.unseen)::int)
    FROM old_rows o CROSS JOIN LATERAL notifyd_private.share(o) s
    WHERE o.user_id IS NOT NULL AND o.seq IS NOT NULL
    GROUP BY o.stream, o.category;
    UPDATE notifyd.shared_tallies t SET items = t.items - g.n
    FROM (SELECT o.stream, coalesce(o.category, '') AS category, l.level,
                 o.dseq >> l.level AS bucket, count(*) AS n
          FROM old_rows o CROSS JOIN (VALUES (8::smallint), (16::smallint)) l(level)
          WHERE o.user_id IS NULL AND o.seq IS NOT NULL
          GROUP BY 1, 2, 3, 4) g
    WHERE (t.stream, t.category, t.level, t.bucket) = (g.stream, g.category, g.level, g.bucket);
    IF pruning THEN
        SELECT array_agg(jsonb_build_object('k', 'c', 's', d.stream, 'q', s.last_seq)
                         || CASE WHEN d.stream LIKE 'user:%'
                                 THEN jsonb_build_object('u', notifyd_private.tallies(d.stream))
                                 ELSE '{}'::jsonb END
                         ORDER BY d.stream)
        INTO events
        FROM (SELECT DISTINCT stream FROM old_rows WHERE seq IS NOT NULL) d
        JOIN notifyd.streams s ON s.stream = d.stream;
    ELSE
        WITH gone AS (
            SELECT o.stream, o.id,
                   row_number() OVER (PARTITION BY o.stream ORDER BY o.seq) AS i
            FROM old_rows o WHERE o.seq IS NOT NULL
        ), heads AS (
            UPDATE notifyd.streams s
            SET last_seq = s.last_seq + g.n
            FROM (SELECT stream, count(*) AS n FROM gone GROUP BY stream) g
            WHERE s.stream = g.stream
            RETURNING s.stream, s.last_seq, g.n
        ), stones AS (
            INSERT INTO notifyd.removals (stream, seq, id)
            SELECT g.stream, h.last_seq - h.n + g.i, g.id
            FROM gone g JOIN heads h ON h.stream = g.stream
            RETURNING stream, seq, id
        )
        SELECT array_agg(
            jsonb_build_object('k', 'd', 'id', st.id, 's', st.stream, 'q', st.seq)
            || CASE WHEN st.stream LIKE 'user:%' AND st.seq = h.last_seq
                    THEN jsonb_build_object('u', notifyd_private.tallies(st.stream))
                    ELSE '{}'::jsonb END
            ORDER BY st.stream, st.seq)
        INTO events
        FROM stones st JOIN heads h ON h.stream = st.stream;
    END IF;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- As in version 6; a pending row is not retention's (it has not been delivered yet).
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
        DELETE FROM notifyd.notifications n
        WHERE n.id = ANY (ARRAY(SELECT id FROM notifyd.notifications
                                WHERE created_at < now() - older_than AND seq IS NOT NULL
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

-- As in version 7, with the receipt's two new columns.
CREATE OR REPLACE FUNCTION notifyd_private.receipt_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev notifyd.receipts;
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.receipts');
    IF TG_OP = 'UPDATE' THEN
        IF NEW.ustream IS DISTINCT FROM OLD.ustream OR NEW.id IS DISTINCT FROM OLD.id THEN
            RAISE EXCEPTION 'notifyd: the user and item of a receipt cannot change'
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.seq := OLD.seq;
        IF NEW IS NOT DISTINCT FROM OLD THEN
            RETURN NEW;
        END IF;
        prev := OLD;
    ELSE
        prev := notifyd_private.no_receipt(NEW.ustream, NEW.id);
    END IF;
    INSERT INTO notifyd.streams AS s (stream, last_seq) VALUES (NEW.ustream, 1)
    ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + 1
    RETURNING s.last_seq INTO NEW.seq;
    IF NEW.read_at IS NOT NULL AND NEW.seen_at IS NULL AND prev.read_at IS NULL THEN
        NEW.seen_at := NEW.read_at;
    END IF;
    NEW.seen_v := CASE WHEN NEW.seen_at IS DISTINCT FROM prev.seen_at OR NEW.seen_v <> prev.seen_v
                       THEN NEW.seq ELSE prev.seen_v END;
    NEW.read_v := CASE WHEN NEW.read_at IS DISTINCT FROM prev.read_at OR NEW.read_v <> prev.read_v
                       THEN NEW.seq ELSE prev.read_v END;
    NEW.archived_v := CASE WHEN NEW.archived_at IS DISTINCT FROM prev.archived_at
                             OR NEW.archived_v <> prev.archived_v
                           THEN NEW.seq ELSE prev.archived_v END;
    RETURN NEW;
END
$$;

-- A user's state of an item before they acted on it (as a receipt): nothing set.
CREATE OR REPLACE FUNCTION notifyd_private.no_receipt(ustream text, id bigint) RETURNS notifyd.receipts
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(ustream, id, 0, NULL, NULL, NULL, NULL, 0, 0, 0, NULL, NULL)::notifyd.receipts
$$;

-- A user's states (as a receipt: an own item's columns, or a receipt) with one of them set
-- (`state`) or cleared (NULL). The version of a state set or cleared is -1: "this, whatever a
-- mark says" (the version triggers make it the change's seq). Read implies seen.
CREATE OR REPLACE FUNCTION notifyd_private.applied(r notifyd.receipts, kind text, state timestamptz)
RETURNS notifyd.receipts
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    CASE kind
        WHEN 'seen' THEN
            r.seen_at := state; r.seen_v := -1;
        WHEN 'read' THEN
            r.read_at := state; r.read_v := -1;
            IF state IS NOT NULL AND r.seen_at IS NULL THEN
                r.seen_at := state; r.seen_v := -1;
            END IF;
        WHEN 'archived' THEN
            r.archived_at := state; r.archived_v := -1;
        WHEN 'snoozed' THEN
            r.snoozed_until := state;
    END CASE;
    RETURN r;
END
$$;

-- An own item's states as a receipt (for notifyd_private.applied).
CREATE OR REPLACE FUNCTION notifyd_private.own_states(n notifyd.notifications) RETURNS notifyd.receipts
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(n.stream, n.id, n.seq, n.seen_at, n.read_at, n.archived_at, n.snoozed_until,
               n.seen_v, n.read_v, n.archived_v, n.interacted_at, n.action)::notifyd.receipts
$$;

-- As in version 7 (same arguments and meaning), and: pending items are nobody's yet; the new
-- states are computed in one place (notifyd_private.applied) for own items and receipts.
CREATE OR REPLACE FUNCTION notifyd_private.set_state(
    user_id text, kind text, state timestamptz, ids bigint[], category text, streams text[],
    batch integer DEFAULT 200
) RETURNS bigint[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    viewer  text := 'user:' || user_id;
    shared  text[];
    picked  bigint[];
    changed bigint[] := '{}';
    more    bigint[];
    now_at  timestamptz := now();
    kinds   text[] := CASE WHEN kind = 'read' THEN ARRAY['seen', 'read'] ELSE ARRAY[kind] END;
BEGIN
    IF user_id IS NULL OR user_id = '' OR char_length(user_id) > 256 THEN
        RAISE EXCEPTION 'notifyd: a user id of 1 to 256 characters is needed'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF category = '' THEN
        RAISE EXCEPTION 'notifyd: a category is 1 to 64 characters (NULL for every category)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF kind = 'snoozed' AND state IS NOT NULL AND state <= now_at THEN
        RAISE EXCEPTION 'notifyd: snooze until a time in the future'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    shared := CASE WHEN streams IS NULL THEN ARRAY['all']
                   ELSE ARRAY(SELECT s FROM unnest(streams) s
                              WHERE s = 'all' OR s LIKE 'role:%') END;
    IF ids IS NULL AND kind <> 'snoozed' AND state IS NOT NULL THEN
        IF set_state.category IS NOT NULL AND NOT EXISTS (
                SELECT FROM notifyd.tallies t
                WHERE t.stream = viewer AND t.category = set_state.category
                UNION ALL
                SELECT FROM notifyd.shared_tallies t
                WHERE t.stream = ANY (shared) AND t.level = 16
                  AND t.category = set_state.category AND t.items > 0) THEN
            RETURN '{}';
        END IF;
        INSERT INTO notifyd.marks (ustream, seq, stream, kind, category, upto, at)
        SELECT viewer, 0, u.s, v.k, coalesce(set_state.category, ''), 0, now_at
        FROM unnest(viewer || shared) WITH ORDINALITY u(s, i),
             unnest(kinds) WITH ORDINALITY v(k, j)
        ORDER BY u.i, v.j;
        RETURN '{}';
    END IF;
    -- The items concerned (the given ids, or the `batch` newest of each stream: bounded work
    -- per call) whose state as the user sees it is not `state` yet.
    SELECT array_agg((c.n).id) INTO picked
    FROM (SELECT n FROM notifyd.notifications n
          WHERE ids IS NOT NULL AND n.id = ANY (set_state.ids) AND n.seq IS NOT NULL
            AND (n.stream = viewer OR n.stream = ANY (shared))
          UNION ALL
          SELECT l.n FROM unnest(viewer || shared) st(s)
          CROSS JOIN LATERAL (SELECT n FROM notifyd.notifications n
                              WHERE ids IS NULL AND n.stream = st.s AND n.dseq IS NOT NULL
                              ORDER BY n.dseq DESC LIMIT batch) l) c
    CROSS JOIN LATERAL notifyd_private.states(c.n, viewer) w
    WHERE (set_state.category IS NULL OR (c.n).category = set_state.category)
      AND CASE set_state.kind
              WHEN 'seen' THEN (w.seen_at IS NULL) = (set_state.state IS NOT NULL)
              WHEN 'read' THEN (w.read_at IS NULL) = (set_state.state IS NOT NULL)
              WHEN 'archived' THEN (w.archived_at IS NULL) = (set_state.state IS NOT NULL)
              ELSE w.snoozed_until IS DISTINCT FROM set_state.state END;
    IF picked IS NULL THEN
        RETURN '{}';
    END IF;
    -- One statement each (own items, known receipts, new receipts): each statement's changes
    -- take consecutive seqs and are announced in that order.
    WITH c AS (
        UPDATE notifyd.notifications n
        SET (seen_at, read_at, archived_at, snoozed_until, seen_v, read_v, archived_v)
            = (SELECT a.seen_at, a.read_at, a.archived_at, a.snoozed_until,
                      a.seen_v, a.read_v, a.archived_v
               FROM notifyd_private.applied(notifyd_private.own_states(n), set_state.kind,
                                            set_state.state) a)
        WHERE n.id = ANY (picked) AND n.stream = viewer
        RETURNING n.id
    ) SELECT coalesce(array_agg(id), '{}') INTO more FROM c;
    changed := changed || more;
    -- The user's counter row, locked to commit (after the own rows above, as an app's UPDATE
    -- locks a row, then the counter row: the same order, no deadlock): one change of the
    -- user's receipts at a time, so the update and insert below never race.
    PERFORM notifyd_private.lock_receipts(viewer);
    WITH c AS (
        UPDATE notifyd.receipts r
        SET (seen_at, read_at, archived_at, snoozed_until, seen_v, read_v, archived_v)
            = (SELECT a.seen_at, a.read_at, a.archived_at, a.snoozed_until,
                      a.seen_v, a.read_v, a.archived_v
               FROM notifyd_private.applied(r, set_state.kind, set_state.state) a)
        WHERE r.ustream = viewer AND r.id = ANY (picked)
        RETURNING r.id
    ) SELECT coalesce(array_agg(id), '{}') INTO more FROM c;
    changed := changed || more;
    WITH c AS (
        INSERT INTO notifyd.receipts
        SELECT a.* FROM notifyd.notifications n
        CROSS JOIN LATERAL notifyd_private.applied(notifyd_private.no_receipt(viewer, n.id),
                                                   set_state.kind, set_state.state) a
        WHERE n.id = ANY (picked) AND n.stream <> viewer
          AND NOT EXISTS (SELECT FROM notifyd.receipts r WHERE r.ustream = viewer AND r.id = n.id)
        ORDER BY n.stream, n.dseq
        RETURNING receipts.id
    ) SELECT coalesce(array_agg(id), '{}') INTO more FROM c;
    changed := changed || more;
    SELECT array_agg(x ORDER BY x) INTO changed FROM unnest(changed) x;
    RETURN changed;
END
$$;

-- Locks a user's counter row to commit: one change of that user's receipts at a time.
CREATE OR REPLACE FUNCTION notifyd_private.lock_receipts(viewer text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notifyd.streams AS s (stream, last_seq) VALUES (viewer, 0)
    ON CONFLICT (stream) DO NOTHING;
    PERFORM FROM notifyd.streams s WHERE s.stream = viewer FOR UPDATE;
END
$$;

-- A user took action `action` of item `id` (an item of their own, or of a shared stream among
-- `streams`, NULL: 'all'): the item is read, and its interacted_at and action are set, the
-- user's state like read (a change replayed like any other). Returns the time. Refuses an
-- item the user does not receive and an action the item does not have.
CREATE FUNCTION notifyd.act(user_id text, id bigint, action text, streams text[] DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    viewer text := 'user:' || user_id;
    item   notifyd.notifications;
BEGIN
    SELECT * INTO item FROM notifyd.notifications n
    WHERE n.id = act.id AND n.seq IS NOT NULL AND coalesce(n.expires_at > now(), true)
      AND (n.stream = viewer
           OR n.stream = ANY (CASE WHEN streams IS NULL THEN ARRAY['all']
                                   ELSE ARRAY(SELECT s FROM unnest(streams) s
                                              WHERE s = 'all' OR s LIKE 'role:%') END));
    IF item.id IS NULL THEN
        RAISE EXCEPTION 'notifyd: user % receives no notification %', left(user_id, 80), id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM jsonb_array_elements(item.actions) a WHERE a ->> 'id' = action) THEN
        RAISE EXCEPTION 'notifyd: notification % has no action %', id, quote_literal(left(action, 64))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM notifyd_private.set_state(user_id, 'read', now(), ARRAY[id], NULL, streams);
    IF item.stream = viewer THEN
        UPDATE notifyd.notifications n SET interacted_at = now(), action = act.action
        WHERE n.id = act.id;
    ELSE
        PERFORM notifyd_private.lock_receipts(viewer);
        UPDATE notifyd.receipts r SET interacted_at = now(), action = act.action
        WHERE r.ustream = viewer AND r.id = act.id;
        IF NOT FOUND THEN
            INSERT INTO notifyd.receipts SELECT * FROM notifyd_private.no_receipt(viewer, act.id);
            UPDATE notifyd.receipts r SET interacted_at = now(), action = act.action
            WHERE r.ustream = viewer AND r.id = act.id;
        END IF;
    END IF;
    RETURN now();
END
$$;

-- The actions users took, own items and shared ones alike: what an app reads (or puts a
-- trigger on the two tables for) to react.
CREATE VIEW notifyd.interactions AS
    SELECT n.id, n.user_id, n.stream, n.action, n.interacted_at
    FROM notifyd.notifications n WHERE n.interacted_at IS NOT NULL
    UNION ALL
    SELECT r.id, substr(r.ustream, 6), n.stream, r.action, r.interacted_at
    FROM notifyd.receipts r JOIN notifyd.notifications n ON n.id = r.id
    WHERE r.interacted_at IS NOT NULL;
REVOKE ALL ON notifyd.interactions FROM PUBLIC;

-- What is due is done row by row, each in a subtransaction: a row whose stream's counter an
-- app transaction holds (its lock is needed to announce the change) is skipped until the next
-- run, and holds up nothing else. The daemon calls these about twice a second, one process at
-- a time (an advisory lock), and takes each row with SKIP LOCKED: each is done once.

-- Delivers at most `batch` pending rows whose time has come, the earliest first, each in turn
-- (so they take their stream's seqs in that order). Returns how many. One already expired is
-- notifyd.expire()'s instead.
CREATE FUNCTION notifyd.deliver(batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '50ms' AS $$
DECLARE
    due   bigint;
    count integer := 0;
BEGIN
    FOR due IN SELECT n.id FROM notifyd.notifications n
               WHERE n.seq IS NULL AND n.deliver_at <= now()
                 AND (n.expires_at IS NULL OR n.expires_at > now())
               ORDER BY n.deliver_at, n.id LIMIT batch
               FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            UPDATE notifyd.notifications SET deliver_at = deliver_at WHERE id = due;
            count := count + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- next time
        END;
    END LOOP;
    RETURN count;
END
$$;

-- Deletes at most `batch` rows whose expires_at has passed (delivered ones are announced as
-- deleted, once; pending ones go silently). Returns how many.
CREATE FUNCTION notifyd.expire(batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '50ms' AS $$
DECLARE
    due  bigint;
    gone integer := 0;
BEGIN
    FOR due IN SELECT n.id FROM notifyd.notifications n WHERE n.expires_at <= now()
               ORDER BY n.expires_at LIMIT batch FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            DELETE FROM notifyd.notifications WHERE id = due;
            gone := gone + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    RETURN gone;
END
$$;

-- As in version 7, row by row.
CREATE OR REPLACE FUNCTION notifyd.wake(batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '50ms' AS $$
DECLARE
    due    record;
    woken  integer := 0;
BEGIN
    FOR due IN SELECT n.id, NULL::text AS ustream FROM notifyd.notifications n
               WHERE n.snoozed_until <= now() ORDER BY n.snoozed_until LIMIT batch
               FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            UPDATE notifyd.notifications SET snoozed_until = NULL WHERE id = due.id;
            woken := woken + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    FOR due IN SELECT r.id, r.ustream FROM notifyd.receipts r
               WHERE r.snoozed_until <= now() ORDER BY r.snoozed_until LIMIT batch
               FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            UPDATE notifyd.receipts SET snoozed_until = NULL
            WHERE ustream = due.ustream AND id = due.id;
            woken := woken + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    RETURN woken;
END
$$;
REVOKE ALL ON FUNCTION notifyd.deliver(integer), notifyd.expire(integer),
    notifyd.act(text, bigint, text, text[]) FROM PUBLIC;

-- A page of a user's feed over `streams` (its own stream `viewer` and the shared ones it
-- receives), newest first (created_at, then id), before the cursor (before_at, before_id;
-- NULL: from the newest). `state`: 'all' (not archived), 'unread', 'unseen' (neither archived)
-- or 'archived'; `category` narrows it. Snoozed, pending and expired items are left out.
-- At most `lim` items, each as the user sees it; and at most `scan` items looked at, or 4 x
-- `scan` rows read from the streams' indexes (each round reads a few rows of every stream):
-- when the filter passed over that many without filling the page, a last row with no
-- notification gives where the next page goes on from. Keyset over an index per stream: a
-- page costs the same at any depth, and no more than that bound whatever the filter.
CREATE FUNCTION notifyd.feed(
    viewer text, streams text[], state text DEFAULT 'all', category text DEFAULT NULL,
    before_at timestamptz DEFAULT NULL, before_id bigint DEFAULT NULL, lim integer DEFAULT 20,
    scan integer DEFAULT 1000
) RETURNS TABLE (id bigint, created_at timestamptz, notification jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chunk    integer := least(greatest(lim * 2, 20), 200);
    ways     integer := greatest(coalesce(cardinality(streams), 0), 1);
    reads    integer := 0;
    cur_at   timestamptz := coalesce(before_at, 'infinity');
    cur_id   bigint := coalesce(before_id, 9223372036854775807);
    looked   integer := 0;
    found    integer := 0;
    got      integer;
    item     notifyd.notifications;
    s        record;
    keep     boolean;
BEGIN
    IF state NOT IN ('all', 'unread', 'unseen', 'archived') THEN
        RAISE EXCEPTION 'notifyd: a feed''s state is all, unread, unseen or archived'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        got := 0;
        reads := reads + ways * chunk;
        FOR item IN
            SELECT (l.n).* FROM unnest(streams) st(s)
            CROSS JOIN LATERAL (
                SELECT n FROM notifyd.notifications n
                WHERE n.stream = st.s AND n.seq IS NOT NULL
                  AND (n.created_at, n.id) < (cur_at, cur_id)
                ORDER BY n.created_at DESC, n.id DESC LIMIT chunk) l
            ORDER BY (l.n).created_at DESC, (l.n).id DESC LIMIT chunk
        LOOP
            got := got + 1;
            looked := looked + 1;
            cur_at := item.created_at;
            cur_id := item.id;
            -- (the category here, not in the scan: a rare one counts against `scan` too)
            keep := (feed.category IS NULL OR item.category = feed.category)
                AND coalesce(item.expires_at > now(), true);
            IF keep THEN
                SELECT * INTO s FROM notifyd_private.states(item, viewer);
                keep := s.snoozed_until IS NULL AND CASE state
                    WHEN 'archived' THEN s.archived_at IS NOT NULL
                    WHEN 'unread' THEN s.archived_at IS NULL AND s.read_at IS NULL
                    WHEN 'unseen' THEN s.archived_at IS NULL AND s.seen_at IS NULL
                    ELSE s.archived_at IS NULL END;
            END IF;
            IF keep THEN
                id := item.id;
                created_at := item.created_at;
                notification := notifyd.wire_of(item, s.seen_at, s.read_at, s.archived_at,
                                                s.snoozed_until, s.interacted_at, s.action);
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
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION notifyd.feed(text, text[], text, text, timestamptz, bigint, integer,
                                    integer) FROM PUBLIC;

-- The sending functions of version 7, with the columns of this version last. notifyd.notify
-- returns the id of the group a row collapsed into.
DROP FUNCTION notifyd.notify(text, text, text, text, jsonb, text, text, text);
DROP FUNCTION notifyd.notify_role(text, text, text, text, jsonb, text, text, text);
DROP FUNCTION notifyd.broadcast(text, text, text, jsonb, text, text, text);
CREATE FUNCTION notifyd.notify(
    user_id text, type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL,
    category text DEFAULT NULL, group_key text DEFAULT NULL, actor text DEFAULT NULL,
    actions jsonb DEFAULT '[]', deliver_at timestamptz DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    made bigint;
BEGIN
    PERFORM set_config('notifyd.grouped_into', '', true);
    INSERT INTO notifyd.notifications (user_id, type, title, message, data, priority, action_url,
                                       category, group_key, actor, actions, deliver_at,
                                       expires_at)
    VALUES (notify.user_id, notify.type, notify.title, notify.message,
            coalesce(notify.data, '{}'), coalesce(notify.priority, 'medium'), notify.action_url,
            notify.category, notify.group_key, notify.actor, coalesce(notify.actions, '[]'),
            notify.deliver_at, notify.expires_at)
    RETURNING id INTO made;
    RETURN coalesce(made, nullif(current_setting('notifyd.grouped_into', true), '')::bigint);
END
$$;
CREATE FUNCTION notifyd.notify_role(
    role text, type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL,
    category text DEFAULT NULL, actions jsonb DEFAULT '[]', deliver_at timestamptz DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO notifyd.notifications (role, type, title, message, data, priority, action_url,
                                       category, actions, deliver_at, expires_at)
    VALUES (notify_role.role, notify_role.type, notify_role.title, notify_role.message,
            coalesce(notify_role.data, '{}'), coalesce(notify_role.priority, 'medium'),
            notify_role.action_url, notify_role.category, coalesce(notify_role.actions, '[]'),
            notify_role.deliver_at, notify_role.expires_at)
    RETURNING id
$$;
CREATE FUNCTION notifyd.broadcast(
    type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL,
    category text DEFAULT NULL, actions jsonb DEFAULT '[]', deliver_at timestamptz DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO notifyd.notifications (stream, type, title, message, data, priority, action_url,
                                       category, actions, deliver_at, expires_at)
    VALUES ('all', broadcast.type, broadcast.title, broadcast.message,
            coalesce(broadcast.data, '{}'), coalesce(broadcast.priority, 'medium'),
            broadcast.action_url, broadcast.category, coalesce(broadcast.actions, '[]'),
            broadcast.deliver_at, broadcast.expires_at)
    RETURNING id
$$;

REVOKE ALL ON FUNCTION notifyd_private.counted(notifyd.notifications),
    notifyd_private.new_events(notifyd.notifications[], float8),
    notifyd_private.lock_receipts(text) FROM PUBLIC;
