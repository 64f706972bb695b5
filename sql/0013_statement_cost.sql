-- notifyd schema, version 13: what an INSERT statement costs the database, cut again.
-- 1. The rows of a statement are counted together: one upsert of the user streams' tallies and
--    one of the shared streams' runs per statement (AFTER, over its new rows), not one or two
--    per row (BEFORE). An INSERT takes each row's stream counter (notifyd.streams) first, as
--    before, and now holds them all while it writes the tallies. A DELETE, which wrote the
--    tallies before it took the counters (since version 8), now takes the counters first too:
--    an INSERT and a DELETE of the same user's items wait for each other, never deadlock.
-- 2. Each new row's event is built once, as text: the row's object by row_to_json() (version
--    12), wrapped and signed as it is. As jsonb it was built, printed for its size, copied into
--    its event, copied again for "u", and printed again to be signed: 27 µs a row, now 6.

-- As in version 8, but the row is counted by after_insert.
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
    RETURN NEW;  -- counted by after_insert, with the statement's other rows
END
$$;

-- The events of rows delivered, as in version 8 (notifyd_private.new_events), as text.
CREATE OR REPLACE FUNCTION notifyd_private.new_event_texts(delivered notifyd.notifications[], t float8)
RETURNS TABLE (stream text, seq bigint, own boolean, ev text)
LANGUAGE plpgsql STABLE ROWS 10 AS $$
BEGIN
    RETURN QUERY
    SELECT r.stream, r.seq, r.user_id IS NOT NULL,
           CASE WHEN octet_length(w.text) <= 7000
                THEN '{"k":"n","n":' || w.text || ',"t":' || new_event_texts.t || '}'
                ELSE json_build_object('k', 'n', 'id', r.id, 's', r.stream, 'q', r.seq,
                                       't', new_event_texts.t, 'c', r.category)::text
           END
    FROM unnest(delivered) r
    CROSS JOIN LATERAL (SELECT row_to_json(notifyd.wire_row(
                                   r, r.seen_at, r.read_at, r.archived_at, r.snoozed_until,
                                   r.interacted_at, r.action))::text) AS w(text);
END
$$;

-- As in version 11, from the above: one definition of a new row's event (an UPDATE that
-- delivers a scheduled row announces it through this one).
CREATE OR REPLACE FUNCTION notifyd_private.new_events(delivered notifyd.notifications[], t float8)
RETURNS TABLE (stream text, seq bigint, own boolean, ev jsonb)
LANGUAGE plpgsql STABLE ROWS 10 AS $$
BEGIN
    RETURN QUERY
    SELECT e.stream, e.seq, e.own, e.ev::jsonb
    FROM notifyd_private.new_event_texts(delivered, new_events.t) e;
END
$$;

-- Signs and sends events given as JSON text (notifyd_private.send_events, for events that
-- are text already).
CREATE OR REPLACE FUNCTION notifyd_private.send_event_texts(events text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k     notifyd_private.channel_keys;
    ev    text;
    texts text[] := '{}';
    size  int := 0;
    body  text;
    n     int := coalesce(array_length(events, 1), 0);
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    SELECT * INTO k FROM notifyd_private.channel_keys
    WHERE created_at <= clock_timestamp() - interval '30 seconds' ORDER BY id DESC LIMIT 1;
    IF NOT FOUND THEN  -- all are new: the first one, which every process read at start
        SELECT * INTO k FROM notifyd_private.channel_keys ORDER BY id LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'notifyd: no channel key (start notifyd once, or run notifyd migrate)';
    END IF;
    FOR j IN 1..n + 1 LOOP
        ev := CASE WHEN j <= n THEN events[j] END;
        IF size > 0 AND (ev IS NULL OR size + octet_length(ev) + 1 > 7800) THEN
            body := '{"k":' || k.id || ',"i":' || nextval('notifyd_private.payload_nonce')
                    || ',"e":[' || array_to_string(texts, ',') || ']}';
            PERFORM pg_notify('notifyd', encode(sha256(k.outer_pad || sha256(
                k.inner_pad || convert_to(body, 'UTF8'))), 'hex') || body);
            texts := '{}';
            size := 0;
        END IF;
        IF ev IS NOT NULL THEN
            texts := texts || ev;
            size := size + octet_length(ev) + 1;
        END IF;
    END LOOP;
END
$$;

-- As in version 4, through the above: one way to sign and send.
CREATE OR REPLACE FUNCTION notifyd_private.send_events(events jsonb[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM notifyd_private.send_event_texts(events::text[]);
END
$$;
REVOKE ALL ON FUNCTION notifyd_private.new_event_texts(notifyd.notifications[], float8),
    notifyd_private.send_event_texts(text[]) FROM PUBLIC;

-- As in version 8, and: the statement's rows are counted here, together (user streams' tallies
-- and shared streams' runs, in key order), before their events read the tallies. Without JIT:
-- the planner cannot know a statement's rows, and its guess for a large one would have each
-- INSERT compile its events' query (about 12 ms, for a query of a fraction of one).
CREATE OR REPLACE FUNCTION notifyd.after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    events text[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    PERFORM set_config('notifyd.fresh_groups', '', true);  -- announced below
    INSERT INTO notifyd.tallies AS t (stream, category, unread, unseen)
    SELECT r.stream, coalesce(r.category, ''),
           count(*) FILTER (WHERE r.read_at IS NULL AND r.archived_at IS NULL
                              AND r.snoozed_until IS NULL),
           count(*) FILTER (WHERE r.seen_at IS NULL AND r.archived_at IS NULL
                              AND r.snoozed_until IS NULL)
    FROM new_rows r
    WHERE r.user_id IS NOT NULL AND r.seq IS NOT NULL
    GROUP BY 1, 2
    HAVING count(*) FILTER (WHERE (r.read_at IS NULL OR r.seen_at IS NULL)
                              AND r.archived_at IS NULL AND r.snoozed_until IS NULL) > 0
    ORDER BY 1, 2
    ON CONFLICT ON CONSTRAINT tallies_pkey DO UPDATE
        SET unread = t.unread + EXCLUDED.unread, unseen = t.unseen + EXCLUDED.unseen;
    INSERT INTO notifyd.shared_tallies AS t (stream, category, level, bucket, items)
    SELECT r.stream, coalesce(r.category, ''), l.level, r.dseq >> l.level, count(*)
    FROM new_rows r CROSS JOIN (VALUES (8::smallint), (16::smallint)) l(level)
    WHERE r.user_id IS NULL AND r.seq IS NOT NULL
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 3, 2, 4
    ON CONFLICT ON CONSTRAINT shared_tallies_pkey DO UPDATE SET items = t.items + EXCLUDED.items;
    SELECT array_agg(CASE WHEN e.own AND e.last
                          THEN left(e.ev, -1) || ',"u":' || notifyd_private.tallies(e.stream)::text
                               || '}'
                          ELSE e.ev END
                     ORDER BY e.stream, e.seq)
    INTO events
    FROM (SELECT d.*, d.seq = max(d.seq) OVER (PARTITION BY d.stream) AS last
          FROM notifyd_private.new_event_texts(
              ARRAY(SELECT r::notifyd.notifications FROM new_rows r WHERE r.seq IS NOT NULL),
              extract(epoch FROM clock_timestamp())::float8) d) e;
    PERFORM notifyd_private.send_event_texts(events);
    RETURN NULL;
END
$$;

-- The other statement triggers' queries take no JIT either, for the same reason.
ALTER FUNCTION notifyd.after_update() SET jit = off;
ALTER FUNCTION notifyd_private.after_receipt() SET jit = off;
ALTER FUNCTION notifyd_private.after_mark() SET jit = off;

-- The CHECK on actions runs in the writer's session, under its search_path: a role that may
-- create a function or an operator (`=`, jsonb_typeof) in a schema it puts before pg_catalog
-- would have its own answer the check. It resolves names in pg_catalog only.
ALTER FUNCTION notifyd_private.valid_actions(jsonb) SET search_path = pg_catalog, pg_temp;

-- As in version 8, and: the streams' counters are taken before the tallies (see 1 above).
CREATE OR REPLACE FUNCTION notifyd.after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    pruning boolean := EXISTS (SELECT FROM notifyd_private.pruning
                               WHERE txid = pg_current_xact_id());
    events  jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    -- the streams' counters first, in order, as an INSERT takes them, then the tallies
    PERFORM FROM notifyd.streams s
    WHERE s.stream IN (SELECT o.stream FROM old_rows o WHERE o.seq IS NOT NULL)
    ORDER BY s.stream
    FOR UPDATE OF s;
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
