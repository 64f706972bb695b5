-- notifyd schema, version 1: notifications, per-stream sequence counters with the unread
-- count, the triggers that NOTIFY the daemons, and the SQL API for apps.
-- Applied by `notifyd migrate` inside one transaction under an advisory lock.

CREATE SCHEMA IF NOT EXISTS notifyd;

-- One row per stream ('user:<id>', 'role:<name>', 'all'). The insert trigger bumps last_seq
-- with an upsert; the row lock is held to commit, so within a stream seq order is commit order
-- and a rolled-back insert leaves no gap. unread is kept for user streams only (O(1) reads).
-- pruned_below: every seq below it may have been removed by retention (a cursor below it
-- cannot be served without a gap, so sync answers with the stream in `reset`).
CREATE TABLE notifyd.streams (
    stream       text   PRIMARY KEY,
    last_seq     bigint NOT NULL DEFAULT 0,
    unread       bigint NOT NULL DEFAULT 0,
    pruned_below bigint NOT NULL DEFAULT 0
);

CREATE TABLE notifyd.notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text,
    role        text,
    stream      text        NOT NULL,
    seq         bigint      NOT NULL,
    type        text        NOT NULL,
    title       text        NOT NULL DEFAULT '',
    message     text        NOT NULL DEFAULT '',
    data        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    priority    text        NOT NULL DEFAULT 'medium',
    action_url  text,
    read_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notifications_stream_seq_key UNIQUE (stream, seq),
    CONSTRAINT notifications_priority_check CHECK (priority IN ('low', 'medium', 'high')),
    CONSTRAINT notifications_data_check CHECK (jsonb_typeof(data) = 'object'),
    CONSTRAINT notifications_type_check CHECK (type <> ''),
    CONSTRAINT notifications_stream_check CHECK (
        (stream = 'all' AND user_id IS NULL AND role IS NULL)
        OR (stream = 'user:' || user_id AND role IS NULL)
        OR (stream = 'role:' || role AND user_id IS NULL)
    )
);

CREATE INDEX notifications_created_at_idx ON notifyd.notifications (created_at);
CREATE INDEX notifications_unread_idx ON notifyd.notifications (stream, id)
    WHERE read_at IS NULL;

-- Wire form of a row: exactly the protocol's Notification object.
CREATE FUNCTION notifyd.to_wire(n notifyd.notifications) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', n.id, 'stream', n.stream, 'seq', n.seq, 'type', n.type,
        'title', n.title, 'message', n.message, 'data', n.data,
        'priority', n.priority, 'actionUrl', n.action_url,
        'read', n.read_at IS NOT NULL,
        'readAt', to_char(n.read_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'createdAt', to_char(n.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

-- BEFORE INSERT, per row: pick the stream, take the next seq (locking the stream's counter
-- row until commit) and count the row as unread.
CREATE FUNCTION notifyd.assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.role IS NOT NULL THEN
        NEW.role := lower(NEW.role);
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
    INSERT INTO notifyd.streams AS s (stream, last_seq, unread)
    VALUES (NEW.stream, 1,
            CASE WHEN NEW.user_id IS NOT NULL AND NEW.read_at IS NULL THEN 1 ELSE 0 END)
    ON CONFLICT (stream) DO UPDATE
        SET last_seq = s.last_seq + 1, unread = s.unread + EXCLUDED.unread
    RETURNING s.last_seq INTO NEW.seq;
    RETURN NEW;
END
$$;

CREATE TRIGGER notifications_assign_seq
    BEFORE INSERT ON notifyd.notifications
    FOR EACH ROW EXECUTE FUNCTION notifyd.assign_seq();

-- Identity columns of a notification never change: a moved row would break seq order.
CREATE FUNCTION notifyd.forbid_move() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.stream IS DISTINCT FROM OLD.stream OR NEW.seq IS DISTINCT FROM OLD.seq
       OR NEW.user_id IS DISTINCT FROM OLD.user_id OR NEW.role IS DISTINCT FROM OLD.role THEN
        RAISE EXCEPTION 'notifyd: stream, seq, user_id and role of a notification cannot change'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER notifications_forbid_move
    BEFORE UPDATE ON notifyd.notifications
    FOR EACH ROW EXECUTE FUNCTION notifyd.forbid_move();

-- Sends events on channel 'notifyd', packing several into one payload while it stays under
-- NOTIFY's 8000-byte limit. Every event is a JSON object; a payload is a JSON array of them.
CREATE FUNCTION notifyd.send_events(events jsonb[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ev   text;
    buf  text := '';
    size int  := 0;
BEGIN
    IF events IS NULL THEN
        RETURN;  -- the statement changed nothing that clients hear about
    END IF;
    FOREACH ev IN ARRAY events::text[] LOOP
        IF size > 0 AND size + octet_length(ev) + 3 > 7900 THEN
            PERFORM pg_notify('notifyd', '[' || buf || ']');
            buf := '';
            size := 0;
        END IF;
        IF size > 0 THEN
            buf := buf || ',';
        END IF;
        buf := buf || ev;
        size := size + octet_length(ev) + 1;
    END LOOP;
    IF size > 0 THEN
        PERFORM pg_notify('notifyd', '[' || buf || ']');
    END IF;
END
$$;

-- AFTER INSERT, per statement: one event per row, {"k":"n", "n": <notification>, "u": unread}.
-- A row whose wire form would not fit a payload is sent as a reference {"k":"n", "id", "s",
-- "q"}, and the daemon fetches it. "u" is the stream's unread count as of this commit (user
-- streams; the counter row stays locked until commit, so it is exact in commit order).
CREATE FUNCTION notifyd.after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    events jsonb[];
BEGIN
    SELECT array_agg(
        CASE WHEN octet_length(w::text) <= 7000
             THEN jsonb_build_object('k', 'n', 'n', w, 'u', s.unread)
             ELSE jsonb_build_object('k', 'n', 'id', r.id, 's', r.stream, 'q', r.seq, 'u', s.unread)
        END ORDER BY r.stream, r.seq)
    INTO events
    FROM new_rows r
    CROSS JOIN LATERAL notifyd.to_wire(r) AS w
    JOIN notifyd.streams s ON s.stream = r.stream;
    PERFORM notifyd.send_events(events);
    RETURN NULL;
END
$$;

CREATE TRIGGER notifications_after_insert
    AFTER INSERT ON notifyd.notifications
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd.after_insert();

-- AFTER UPDATE, per statement: rows whose read state changed adjust the unread counter and
-- produce {"k":"r", "s": stream, "ids": [...], "at": readAt or null, "u": unread, "o": origin}
-- (chunks of at most 500 ids). "o" is the connection that asked (set by the daemon with
-- set_config('notifyd.origin', ...)), so it is not told twice.
CREATE FUNCTION notifyd.after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    origin text := nullif(current_setting('notifyd.origin', true), '');
    events jsonb[];
BEGIN
    WITH changed AS (
        SELECT n.stream, n.id, n.read_at, (o.read_at IS NULL) AS was_unread
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE (n.read_at IS NULL) <> (o.read_at IS NULL) AND n.user_id IS NOT NULL
    ), deltas AS (
        UPDATE notifyd.streams s
        SET unread = s.unread + d.delta
        FROM (SELECT stream, sum(CASE WHEN was_unread THEN -1 ELSE 1 END) AS delta
              FROM changed GROUP BY stream) d
        WHERE s.stream = d.stream
        RETURNING s.stream, s.unread
    ), chunks AS (
        SELECT c.stream, c.read_at, (row_number() OVER w - 1) / 500 AS chunk, c.id
        FROM changed c
        WINDOW w AS (PARTITION BY c.stream, c.read_at ORDER BY c.id)
    )
    SELECT array_agg(ev) INTO events FROM (
        SELECT jsonb_build_object(
            'k', 'r', 's', ch.stream, 'ids', jsonb_agg(ch.id ORDER BY ch.id),
            'at', to_char(ch.read_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'u', d.unread, 'o', origin) AS ev
        FROM chunks ch JOIN deltas d ON d.stream = ch.stream
        GROUP BY ch.stream, ch.read_at, ch.chunk, d.unread
        ORDER BY ch.stream, ch.read_at NULLS FIRST, ch.chunk
    ) e;
    PERFORM notifyd.send_events(events);
    RETURN NULL;
END
$$;

CREATE TRIGGER notifications_after_update
    AFTER UPDATE ON notifyd.notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd.after_update();

-- AFTER DELETE, per statement: {"k":"d", "id", "s"} per row, then the stream's unread count
-- when deleted rows were unread.
CREATE FUNCTION notifyd.after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    events jsonb[];
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
        UNION ALL
        SELECT jsonb_build_object('k', 'c', 's', d.stream, 'u', d.unread), 2
        FROM deltas d
    ) e;
    PERFORM notifyd.send_events(events);
    RETURN NULL;
END
$$;

CREATE TRIGGER notifications_after_delete
    AFTER DELETE ON notifyd.notifications
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd.after_delete();

-- The SQL API for apps and their triggers. Each returns the new row's id.
CREATE FUNCTION notifyd.notify(
    user_id text, type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO notifyd.notifications (user_id, type, title, message, data, priority, action_url)
    VALUES (notify.user_id, notify.type, notify.title, notify.message,
            coalesce(notify.data, '{}'), coalesce(notify.priority, 'medium'), notify.action_url)
    RETURNING id
$$;

CREATE FUNCTION notifyd.notify_role(
    role text, type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO notifyd.notifications (role, type, title, message, data, priority, action_url)
    VALUES (notify_role.role, notify_role.type, notify_role.title, notify_role.message,
            coalesce(notify_role.data, '{}'), coalesce(notify_role.priority, 'medium'),
            notify_role.action_url)
    RETURNING id
$$;

CREATE FUNCTION notifyd.broadcast(
    type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO notifyd.notifications (stream, type, title, message, data, priority, action_url)
    VALUES ('all', broadcast.type, broadcast.title, broadcast.message,
            coalesce(broadcast.data, '{}'), coalesce(broadcast.priority, 'medium'),
            broadcast.action_url)
    RETURNING id
$$;
