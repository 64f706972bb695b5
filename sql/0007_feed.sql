-- notifyd schema, version 7: the feed. Every item has, for each user who receives it, seen,
-- read, archived and snoozed states, and a category; counts are kept per category.
-- 1. A user's own items keep their states in their row (seen_at, read_at, archived_at,
--    snoozed_until): a plain UPDATE keeps working. Shared items (role: and all streams) stay one
--    row; a user's state for one exists only once that user acts on it: a row of
--    notifyd.receipts, which takes its seq in the user's own stream (so it is replayed there).
-- 2. "All seen", "all read" and "all archived" are marks (notifyd.marks), one row per user,
--    stream, state and category: every item of the stream delivered up to the mark (its dseq)
--    is in that state, unless its own state changed after the mark. A mark takes its seq in the
--    user's stream too. No row is written per item.
-- 3. The state of an item as a user sees it (notifyd.to_wire(n, viewer)) is its own state (row
--    or receipt), or, where a later mark covers it, the mark's. Each of seen/read/archived has
--    a version (seen_v, ...): the seq in the user's stream at which it was last set; 0 before.
-- 4. Counts per user stream and category (notifyd.tallies): unread and unseen among items not
--    archived and not snoozed, kept by the triggers in the same transaction. Reading one is
--    O(1). streams.unread is gone.
-- 5. Snoozed items wake at their time (notifyd.wake(), run by one daemon at a time): the
--    change is replayed like any other.
-- 6. Events: "u" is now the stream's tallies, {category: [unread, unseen]} ("" for none); a
--    receipt's change is an "m" whose "s"/"q" are its place in the user's stream; a mark is "a".

-- Existing rows: read implies seen. Updated before the triggers change, with them off: not a
-- change any client needs to hear of (its seen state did not exist before).
ALTER TABLE notifyd.notifications DISABLE TRIGGER notifications_next_version;
ALTER TABLE notifyd.notifications DISABLE TRIGGER notifications_after_update;
ALTER TABLE notifyd.notifications
    ADD COLUMN category      text,
    ADD COLUMN seen_at       timestamptz,
    ADD COLUMN archived_at   timestamptz,
    ADD COLUMN snoozed_until timestamptz,
    ADD COLUMN seen_v        bigint NOT NULL DEFAULT 0,
    ADD COLUMN read_v        bigint NOT NULL DEFAULT 0,
    ADD COLUMN archived_v    bigint NOT NULL DEFAULT 0;
UPDATE notifyd.notifications SET seen_at = read_at WHERE read_at IS NOT NULL AND user_id IS NOT NULL;
-- A shared row's read_at meant nothing (every user saw it unread): cleared, and refused now.
UPDATE notifyd.notifications SET read_at = NULL WHERE user_id IS NULL AND read_at IS NOT NULL;
ALTER TABLE notifyd.notifications ENABLE TRIGGER notifications_next_version;
ALTER TABLE notifyd.notifications ENABLE TRIGGER notifications_after_update;

ALTER TABLE notifyd.notifications
    ADD CONSTRAINT notifications_category_check
        CHECK (char_length(category) BETWEEN 1 AND 64),
    ADD CONSTRAINT notifications_shared_state_check
        CHECK (user_id IS NOT NULL OR (seen_at IS NULL AND read_at IS NULL
                                       AND archived_at IS NULL AND snoozed_until IS NULL));
CREATE INDEX notifications_delivered_idx ON notifyd.notifications (stream, dseq)
    INCLUDE (category);
CREATE INDEX notifications_snoozed_idx ON notifyd.notifications (snoozed_until)
    WHERE snoozed_until IS NOT NULL;
DROP INDEX notifyd.notifications_unread_idx;

-- A user's state for a shared item, once the user acted on it. `ustream` is the user's stream
-- ('user:<id>'), `seq` the receipt's place in it (its version there).
CREATE TABLE notifyd.receipts (
    ustream       text        NOT NULL,
    id            bigint      NOT NULL REFERENCES notifyd.notifications (id) ON DELETE CASCADE,
    seq           bigint      NOT NULL,
    seen_at       timestamptz,
    read_at       timestamptz,
    archived_at   timestamptz,
    snoozed_until timestamptz,
    seen_v        bigint      NOT NULL DEFAULT 0,
    read_v        bigint      NOT NULL DEFAULT 0,
    archived_v    bigint      NOT NULL DEFAULT 0,
    CONSTRAINT receipts_pkey PRIMARY KEY (ustream, id),
    CONSTRAINT receipts_seq_key UNIQUE (ustream, seq)
);
CREATE INDEX receipts_id_idx ON notifyd.receipts (id);
CREATE INDEX receipts_snoozed_idx ON notifyd.receipts (snoozed_until)
    WHERE snoozed_until IS NOT NULL;

-- "Everything of `stream` delivered up to `upto` is `kind`" for one user (category '': every
-- category), as of `at`, at `seq` in the user's stream. Each mark is a row of its own: an item
-- takes the time of the first mark after its own last change of that state (a later mark
-- does not move the time an item was read).
CREATE TABLE notifyd.marks (
    ustream  text        NOT NULL,
    seq      bigint      NOT NULL,
    stream   text        NOT NULL,
    kind     text        NOT NULL CHECK (kind IN ('seen', 'read', 'archived')),
    category text        NOT NULL DEFAULT '',
    upto     bigint      NOT NULL,
    at       timestamptz NOT NULL,
    CONSTRAINT marks_pkey PRIMARY KEY (ustream, seq)
);
CREATE INDEX marks_covering_idx ON notifyd.marks (ustream, stream, kind, seq);
CREATE INDEX marks_upto_idx ON notifyd.marks (ustream, stream, kind, category, upto);

-- Per user stream and category ('' for none): items unread, and unseen, that are neither
-- archived nor snoozed, as that user sees them.
CREATE TABLE notifyd.tallies (
    stream   text   NOT NULL,
    category text   NOT NULL,
    unread   bigint NOT NULL DEFAULT 0,
    unseen   bigint NOT NULL DEFAULT 0,
    CONSTRAINT tallies_pkey PRIMARY KEY (stream, category)
);
-- Per shared stream (role:, all) and category: how many items were delivered in each run of
-- 256 seqs (level 8: dseq >> 8) and of 65,536 seqs (level 16: dseq >> 16) and still exist. A
-- user's count of the stream is the items above their marks (the whole runs of 65,536 above,
-- then at most 255 runs of 256, then at most 255 rows) corrected by their receipts: a few
-- hundred rows read whatever the stream's length.
CREATE TABLE notifyd.shared_tallies (
    stream   text     NOT NULL,
    category text     NOT NULL,
    level    smallint NOT NULL CHECK (level IN (8, 16)),
    bucket   bigint   NOT NULL,
    items    bigint   NOT NULL,
    CONSTRAINT shared_tallies_pkey PRIMARY KEY (stream, level, category, bucket)
);
INSERT INTO notifyd.shared_tallies (stream, category, level, bucket, items)
SELECT stream, '', l.level, dseq >> l.level, count(*)
FROM notifyd.notifications CROSS JOIN (VALUES (8::smallint), (16::smallint)) l(level)
WHERE user_id IS NULL GROUP BY stream, l.level, dseq >> l.level;

INSERT INTO notifyd.tallies (stream, category, unread, unseen)
SELECT stream, '', count(*) FILTER (WHERE read_at IS NULL), count(*) FILTER (WHERE seen_at IS NULL)
FROM notifyd.notifications WHERE user_id IS NOT NULL GROUP BY stream;
ALTER TABLE notifyd.streams DROP COLUMN unread;

REVOKE ALL ON notifyd.receipts, notifyd.marks, notifyd.tallies, notifyd.shared_tallies
    FROM PUBLIC;

-- The time format of the protocol. (In schema notifyd, as the next one: to_wire(), which an
-- app may call, is made of them.)
CREATE FUNCTION notifyd.wire_time(t timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- A state as `viewer` sees it: its own value (`explicit`, set at `version` in the viewer's
-- stream), or, when unset, the time of the first mark made after it that covers the item.
CREATE OR REPLACE FUNCTION notifyd_private.settled(
    viewer text, kind text, stream text, category text, dseq bigint,
    explicit timestamptz, version bigint
) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    marked timestamptz;
BEGIN
    IF explicit IS NOT NULL THEN
        RETURN explicit;
    END IF;
    SELECT m.at INTO marked FROM notifyd.marks m
    WHERE m.ustream = viewer AND m.stream = settled.stream AND m.kind = settled.kind
      AND m.seq > version AND m.upto >= dseq
      AND m.category IN ('', coalesce(settled.category, ''))
    ORDER BY m.seq LIMIT 1;
    RETURN marked;
END
$$;

-- The protocol's Notification object of a row with the given states.
CREATE FUNCTION notifyd.wire_of(
    n notifyd.notifications, seen_at timestamptz, read_at timestamptz,
    archived_at timestamptz, snoozed_until timestamptz
) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', n.id, 'stream', n.stream, 'seq', n.seq, 'deliveredSeq', n.dseq, 'type', n.type,
        'category', n.category, 'title', n.title, 'message', n.message, 'data', n.data,
        'priority', n.priority, 'actionUrl', n.action_url,
        'seen', seen_at IS NOT NULL, 'seenAt', notifyd.wire_time(seen_at),
        'read', read_at IS NOT NULL, 'readAt', notifyd.wire_time(read_at),
        'archived', archived_at IS NOT NULL, 'archivedAt', notifyd.wire_time(archived_at),
        'snoozedUntil', notifyd.wire_time(snoozed_until),
        'createdAt', notifyd.wire_time(n.created_at))
$$;

-- A row as it is stored: a user's own item with its own states, a shared one as it is for a
-- user who has not acted on it. What a new item is for everyone.
CREATE OR REPLACE FUNCTION notifyd.to_wire(n notifyd.notifications) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT notifyd.wire_of(n, n.seen_at, n.read_at, n.archived_at, n.snoozed_until)
$$;

-- The states of a row as `viewer` (a user stream) sees them: its own (a user's own item), or
-- the viewer's receipt of a shared item, then the viewer's marks.
CREATE OR REPLACE FUNCTION notifyd_private.states(
    n notifyd.notifications, viewer text, OUT seen_at timestamptz, OUT read_at timestamptz,
    OUT archived_at timestamptz, OUT snoozed_until timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    seen_v     bigint := 0;
    read_v     bigint := 0;
    archived_v bigint := 0;
BEGIN
    IF n.stream = viewer THEN
        seen_at := n.seen_at; read_at := n.read_at; archived_at := n.archived_at;
        snoozed_until := n.snoozed_until;
        seen_v := n.seen_v; read_v := n.read_v; archived_v := n.archived_v;
    ELSE
        SELECT r.seen_at, r.read_at, r.archived_at, r.snoozed_until,
               r.seen_v, r.read_v, r.archived_v
        INTO seen_at, read_at, archived_at, snoozed_until, seen_v, read_v, archived_v
        FROM notifyd.receipts r WHERE r.ustream = viewer AND r.id = n.id;
        seen_v := coalesce(seen_v, 0);
        read_v := coalesce(read_v, 0);
        archived_v := coalesce(archived_v, 0);
    END IF;
    -- the user's marks, for a state not set: each takes the time of the first mark after its
    -- own last change that covers the item (one index scan for the three)
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

-- A row as `viewer` sees it.
-- (PL/pgSQL: its plans are kept for the session; a SQL function with a FROM clause that returns
-- one value is planned anew at every call.)
-- (As the owner: it reads the user's receipts and marks, which no app role may; executable by
-- the roles it is granted to, like notifyd.counts.)
CREATE FUNCTION notifyd.to_wire(n notifyd.notifications, viewer text) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM notifyd_private.states(n, viewer);
    RETURN notifyd.wire_of(n, s.seen_at, s.read_at, s.archived_at, s.snoozed_until);
END
$$;

-- An own item's share of its stream's tallies, as its user sees it: (unread, unseen).
CREATE OR REPLACE FUNCTION notifyd_private.share(n notifyd.notifications, OUT unread int,
                                                 OUT unseen int)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s    record;
    live boolean;
BEGIN
    s := notifyd_private.states(n, n.stream);
    live := s.archived_at IS NULL AND s.snoozed_until IS NULL;
    unread := (s.read_at IS NULL AND live)::int;
    unseen := (s.seen_at IS NULL AND live)::int;
END
$$;

-- Adds to a stream's tallies of a category.
CREATE OR REPLACE FUNCTION notifyd_private.tally(stream text, category text, unread int, unseen int)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO notifyd.tallies AS t (stream, category, unread, unseen)
    SELECT tally.stream, coalesce(tally.category, ''), tally.unread, tally.unseen
    WHERE tally.unread <> 0 OR tally.unseen <> 0
    ON CONFLICT (stream, category) DO UPDATE
        SET unread = t.unread + EXCLUDED.unread, unseen = t.unseen + EXCLUDED.unseen
$$;

-- Adds to a shared stream's count of the items delivered in one run of seqs.
CREATE OR REPLACE FUNCTION notifyd_private.shared_tally(stream text, category text, dseq bigint,
                                                        items int)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO notifyd.shared_tallies AS t (stream, category, level, bucket, items)
    VALUES (shared_tally.stream, coalesce(shared_tally.category, ''), 8, shared_tally.dseq >> 8,
            shared_tally.items),
           (shared_tally.stream, coalesce(shared_tally.category, ''), 16, shared_tally.dseq >> 16,
            shared_tally.items)
    ON CONFLICT (stream, level, category, bucket) DO UPDATE SET items = t.items + EXCLUDED.items
$$;

-- The items of a shared stream and category delivered above a seq that still exist.
CREATE OR REPLACE FUNCTION notifyd_private.alive(stream text, category text, above bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    block   bigint := above >> 16;      -- the run of 65,536 seqs `above` is in
    run     bigint := above >> 8;       -- the run of 256
    later   bigint;                     -- items of the runs of 65,536 after it
    inblock bigint;                     -- items of its run of 65,536
    inrun   bigint;                     -- items of its run of 256
    part    bigint;
BEGIN
    -- Whole runs where that is cheaper than rows: each side of `above` is counted from the
    -- nearer end of its run (at most 127 runs of 256 and 127 rows, whatever the length).
    SELECT coalesce(sum(t.items), 0) INTO later FROM notifyd.shared_tallies t
    WHERE t.stream = alive.stream AND t.level = 16 AND t.category = alive.category
      AND t.bucket > block;
    SELECT coalesce(max(t.items), 0) INTO inblock FROM notifyd.shared_tallies t
    WHERE t.stream = alive.stream AND t.level = 16 AND t.category = alive.category
      AND t.bucket = block;
    SELECT coalesce(max(t.items), 0) INTO inrun FROM notifyd.shared_tallies t
    WHERE t.stream = alive.stream AND t.level = 8 AND t.category = alive.category
      AND t.bucket = run;
    -- the items of its run of 256 above `above`
    IF (above & 255) < 128 THEN
        SELECT inrun - count(*) INTO part FROM notifyd.notifications n
        WHERE n.stream = alive.stream AND n.dseq >= run << 8 AND n.dseq <= above
          AND coalesce(n.category, '') = alive.category;
    ELSE
        SELECT count(*) INTO part FROM notifyd.notifications n
        WHERE n.stream = alive.stream AND n.dseq > above AND n.dseq < (run + 1) << 8
          AND coalesce(n.category, '') = alive.category;
    END IF;
    -- and those of the later runs of 256 in its run of 65,536
    IF run - (block << 8) < 128 THEN
        SELECT part + inblock - inrun - coalesce(sum(t.items), 0) INTO part
        FROM notifyd.shared_tallies t
        WHERE t.stream = alive.stream AND t.level = 8 AND t.category = alive.category
          AND t.bucket >= block << 8 AND t.bucket < run;
    ELSE
        SELECT part + coalesce(sum(t.items), 0) INTO part FROM notifyd.shared_tallies t
        WHERE t.stream = alive.stream AND t.level = 8 AND t.category = alive.category
          AND t.bucket > run AND t.bucket < (block + 1) << 8;
    END IF;
    RETURN later + part;
END
$$;

-- Up to which seq of `stream` a user's marks of a kind cover the items of a category.
CREATE OR REPLACE FUNCTION notifyd_private.marked_upto(viewer text, stream text, kind text,
                                                       category text)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    upto bigint;
BEGIN
    SELECT max(m.upto) INTO upto FROM notifyd.marks m
    WHERE m.ustream = viewer AND m.stream = marked_upto.stream AND m.kind = marked_upto.kind
      AND m.category IN ('', marked_upto.category);
    RETURN coalesce(upto, 0);
END
$$;

-- A user stream's tallies as events carry them ("u"): {category: [unread, unseen]}.
-- (PL/pgSQL here and below: its plans are kept for the session, while a SQL function that is
-- not inlined is planned at every call, which costs more than the query.)
CREATE OR REPLACE FUNCTION notifyd_private.tallies(stream text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    out jsonb;
BEGIN
    SELECT coalesce(jsonb_object_agg(t.category, jsonb_build_array(t.unread, t.unseen)), '{}')
    INTO out FROM notifyd.tallies t WHERE t.stream = tallies.stream;
    RETURN out;
END
$$;

-- As in version 6; the row's states are its own (no version yet), read implies seen, and an
-- own item counts in its stream's tallies.
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
    INSERT INTO notifyd.streams AS s (stream, last_seq) VALUES (NEW.stream, 1)
    ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + 1
    RETURNING s.last_seq INTO NEW.seq;
    NEW.dseq := NEW.seq;
    NEW.seen_v := 0;
    NEW.read_v := 0;
    NEW.archived_v := 0;
    IF NEW.user_id IS NOT NULL THEN
        NEW.seen_at := coalesce(NEW.seen_at, NEW.read_at);
        PERFORM notifyd_private.tally(NEW.stream, NEW.category,
            (NEW.read_at IS NULL AND NEW.archived_at IS NULL AND NEW.snoozed_until IS NULL)::int,
            (NEW.seen_at IS NULL AND NEW.archived_at IS NULL AND NEW.snoozed_until IS NULL)::int);
    ELSE
        PERFORM notifyd_private.shared_tally(NEW.stream, NEW.category, NEW.dseq, 1);
    END IF;
    RETURN NEW;
END
$$;

-- As in version 6; a state set (or its version written, which is how the state functions say
-- "this, whatever a mark says") takes the new seq as its version, read implies seen, and the
-- change of the row's share moves its stream's tallies.
CREATE OR REPLACE FUNCTION notifyd.next_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    before record;
    after  record;
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.stream IS DISTINCT FROM OLD.stream
       OR NEW.seq IS DISTINCT FROM OLD.seq OR NEW.dseq IS DISTINCT FROM OLD.dseq
       OR NEW.user_id IS DISTINCT FROM OLD.user_id OR NEW.role IS DISTINCT FROM OLD.role THEN
        RAISE EXCEPTION 'notifyd: id, stream, seq, dseq, user_id and role of a notification cannot change'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    UPDATE notifyd.streams SET last_seq = last_seq + 1 WHERE stream = NEW.stream
    RETURNING last_seq INTO NEW.seq;
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

-- AFTER INSERT, per statement: as in version 4; the last row of each user stream carries "u",
-- the stream's tallies, and a reference carries "c", the row's category.
CREATE OR REPLACE FUNCTION notifyd.after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events jsonb[];
    t      float8 := extract(epoch FROM clock_timestamp());
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    SELECT array_agg(
        CASE WHEN octet_length(w::text) <= 7000
             THEN jsonb_build_object('k', 'n', 'n', w, 't', t)
             ELSE jsonb_build_object('k', 'n', 'id', r.id, 's', r.stream, 'q', r.seq, 't', t,
                                     'c', r.category)
        END || CASE WHEN r.seq = l.last_seq
                    THEN jsonb_build_object('u', notifyd_private.tallies(r.stream))
                    ELSE '{}'::jsonb END
        ORDER BY r.stream, r.seq)
    INTO events
    FROM new_rows r
    CROSS JOIN LATERAL notifyd.to_wire(r) AS w
    LEFT JOIN (SELECT stream, max(seq) AS last_seq FROM new_rows
               WHERE user_id IS NOT NULL GROUP BY stream) l ON l.stream = r.stream;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- AFTER UPDATE, per statement: as in version 6; an own row is sent as its user sees it, a
-- shared one as it is for a user who has not acted on it (the daemon sends each of its users
-- their own view); "u" is the stream's tallies.
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
                       THEN jsonb_build_object('u', notifyd_private.tallies(n.stream))
                       ELSE '{}'::jsonb END AS ev
        FROM new_rows n
        JOIN old_rows o ON o.id = n.id
        CROSS JOIN LATERAL (SELECT CASE WHEN n.user_id IS NOT NULL
                                        THEN notifyd.to_wire(n, n.stream)
                                        ELSE notifyd.to_wire(n) END AS w) v
        WHERE n.seq <> o.seq
    ) e;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- AFTER DELETE, per statement: as in version 6; the rows' shares leave their tallies first, and
-- "u" is the stream's tallies. Retention's delete sends {"k":"c", "s", "q": the stream's last
-- seq} per stream it deleted from, with "u" for a user stream (a shared stream's counts are
-- each user's: the daemon reads them again).
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
    WHERE o.user_id IS NOT NULL
    GROUP BY o.stream, o.category;
    UPDATE notifyd.shared_tallies t SET items = t.items - g.n
    FROM (SELECT o.stream, coalesce(o.category, '') AS category, l.level,
                 o.dseq >> l.level AS bucket, count(*) AS n
          FROM old_rows o CROSS JOIN (VALUES (8::smallint), (16::smallint)) l(level)
          WHERE o.user_id IS NULL
          GROUP BY 1, 2, 3, 4) g
    WHERE (t.stream, t.category, t.level, t.bucket) = (g.stream, g.category, g.level, g.bucket);
    IF pruning THEN
        SELECT array_agg(jsonb_build_object('k', 'c', 's', d.stream, 'q', s.last_seq)
                         || CASE WHEN d.stream LIKE 'user:%'
                                 THEN jsonb_build_object('u', notifyd_private.tallies(d.stream))
                                 ELSE '{}'::jsonb END
                         ORDER BY d.stream)
        INTO events
        FROM (SELECT DISTINCT stream FROM old_rows) d
        JOIN notifyd.streams s ON s.stream = d.stream;
    ELSE
        WITH gone AS (
            SELECT o.stream, o.id,
                   row_number() OVER (PARTITION BY o.stream ORDER BY o.seq) AS i
            FROM old_rows o
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

-- BEFORE INSERT OR UPDATE of a receipt, per row: a change takes the next seq of the user's
-- stream (its version there), and each state set takes it as its version; read implies seen.
-- A receipt whose states all stay the same keeps its seq.
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
        prev := ROW(NEW.ustream, NEW.id, 0, NULL, NULL, NULL, NULL, 0, 0, 0)::notifyd.receipts;
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

CREATE TRIGGER receipts_version
    BEFORE INSERT OR UPDATE ON notifyd.receipts
    FOR EACH ROW EXECUTE FUNCTION notifyd_private.receipt_version();

-- The events of changed receipts (see after_receipt).
CREATE OR REPLACE FUNCTION notifyd_private.receipt_events(changed notifyd.receipts[])
RETURNS TABLE (ustream text, seq bigint, ev jsonb)
LANGUAGE sql STABLE AS $$
    SELECT r.ustream, r.seq,
           CASE WHEN octet_length(w::text) <= 7000
                THEN jsonb_build_object('k', 'm', 'n', w, 's', r.ustream, 'q', r.seq)
                ELSE jsonb_build_object('k', 'm', 'id', r.id, 's', r.ustream, 'q', r.seq,
                                        'v', r.ustream, 'i', n.stream)
           END
    FROM unnest(changed) r
    JOIN notifyd.notifications n ON n.id = r.id
    CROSS JOIN LATERAL notifyd.to_wire(n, r.ustream) AS w
$$;

-- AFTER INSERT or UPDATE of receipts, per statement: {"k":"m", "n": <the item as its user sees
-- it>, "s": the user's stream, "q": the receipt's seq} per changed receipt, in seq order (a
-- reference {"k":"m", "id", "s", "q", "v": the user's stream, "i": the item's stream} when
-- too large).
CREATE OR REPLACE FUNCTION notifyd_private.after_receipt() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.receipts');
    -- An update that changed nothing kept the receipt's seq: nothing to announce. (old_rows
    -- exists only for an UPDATE; each branch is planned only when it runs.)
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(ev ORDER BY ustream, seq) INTO events
        FROM notifyd_private.receipt_events(ARRAY(SELECT r::notifyd.receipts FROM new_rows r)) e;
    ELSE
        SELECT array_agg(ev ORDER BY ustream, seq) INTO events
        FROM notifyd_private.receipt_events(ARRAY(
            SELECT r::notifyd.receipts FROM new_rows r
            WHERE NOT EXISTS (SELECT FROM old_rows o WHERE o.ustream = r.ustream
                                                       AND o.id = r.id AND o.seq = r.seq))) e;
    END IF;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

CREATE TRIGGER receipts_after_insert
    AFTER INSERT ON notifyd.receipts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd_private.after_receipt();
CREATE TRIGGER receipts_after_update
    AFTER UPDATE ON notifyd.receipts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd_private.after_receipt();

-- BEFORE INSERT OR UPDATE of a mark, per row: it takes the next seq of the user's stream and
-- covers what `stream` has delivered by now (its own stream: everything before the mark, the
-- counter row being locked; a shared stream: what has committed). On the user's own stream
-- the tallies of what it covers drop to 0 (every item it covers is then in its state).
CREATE OR REPLACE FUNCTION notifyd_private.mark_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.marks');
    INSERT INTO notifyd.streams AS s (stream, last_seq) VALUES (NEW.ustream, 1)
    ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + 1
    RETURNING s.last_seq INTO NEW.seq;
    IF NEW.stream = NEW.ustream THEN
        NEW.upto := NEW.seq - 1;
        UPDATE notifyd.tallies t
        SET unread = CASE WHEN NEW.kind IN ('read', 'archived') THEN 0 ELSE t.unread END,
            unseen = CASE WHEN NEW.kind IN ('seen', 'archived') THEN 0 ELSE t.unseen END
        WHERE t.stream = NEW.ustream AND (NEW.category = '' OR t.category = NEW.category);
    ELSE
        NEW.upto := coalesce((SELECT last_seq FROM notifyd.streams WHERE stream = NEW.stream), 0);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER marks_version
    BEFORE INSERT OR UPDATE ON notifyd.marks
    FOR EACH ROW EXECUTE FUNCTION notifyd_private.mark_version();

-- AFTER INSERT or UPDATE of marks, per statement: {"k":"a", "s": the user's stream, "q": the
-- mark's seq, "kind", "c": category or null, "target": stream, "upto", "at"}, in seq order; the
-- last of each user's stream carries "u", its tallies.
CREATE OR REPLACE FUNCTION notifyd_private.after_mark() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.marks');
    SELECT array_agg(ev ORDER BY ustream, seq) INTO events FROM (
        SELECT m.ustream, m.seq,
               jsonb_build_object('k', 'a', 's', m.ustream, 'q', m.seq, 'kind', m.kind,
                                  'c', nullif(m.category, ''), 'target', m.stream,
                                  'upto', m.upto, 'at', notifyd.wire_time(m.at))
               || CASE WHEN m.seq = max(m.seq) OVER (PARTITION BY m.ustream)
                       THEN jsonb_build_object('u', notifyd_private.tallies(m.ustream))
                       ELSE '{}'::jsonb END AS ev
        FROM new_rows m) e;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

CREATE TRIGGER marks_after_insert
    AFTER INSERT ON notifyd.marks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd_private.after_mark();
CREATE TRIGGER marks_after_update
    AFTER UPDATE ON notifyd.marks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifyd_private.after_mark();

-- The state functions. `kind`: seen, read, archived or snoozed; `state`: the time to set, or
-- NULL to clear it. `ids` NULL: every item of the user (narrowed to `category` when given) in
-- `streams` (NULL: the user's own and 'all'); seen, read and archived then take marks (one row
-- per stream, whatever the number of items), the others change those among the `batch` newest
-- items of each stream not yet in that state. Returns the ids that changed (of marks: none).
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
    -- NULL: the user's own stream and 'all' (the database does not know the user's roles: a
    -- role's stream is acted on only when named)
    shared := CASE WHEN streams IS NULL THEN ARRAY['all']
                   ELSE ARRAY(SELECT s FROM unnest(streams) s
                              WHERE s = 'all' OR s LIKE 'role:%') END;
    IF ids IS NULL AND kind <> 'snoozed' AND state IS NOT NULL THEN
        -- a category none of the streams has: no mark (it would cover nothing)
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
    -- The items concerned whose state as the user sees it is not `state` yet: of the given
    -- ids, or, for all, among the `batch` newest items of each stream (bounded work per call).
    IF ids IS NOT NULL THEN
        SELECT array_agg(n.id) INTO picked
        FROM notifyd.notifications n
        CROSS JOIN LATERAL notifyd_private.states(n, viewer) w
        WHERE n.id = ANY (set_state.ids) AND (n.stream = viewer OR n.stream = ANY (shared))
          AND CASE set_state.kind
                  WHEN 'seen' THEN (w.seen_at IS NULL) = (set_state.state IS NOT NULL)
                  WHEN 'read' THEN (w.read_at IS NULL) = (set_state.state IS NOT NULL)
                  WHEN 'archived' THEN (w.archived_at IS NULL) = (set_state.state IS NOT NULL)
                  ELSE w.snoozed_until IS DISTINCT FROM set_state.state END;
    ELSE
        SELECT array_agg((l.n).id) INTO picked
        FROM unnest(viewer || shared) st(s)
        CROSS JOIN LATERAL (SELECT n FROM notifyd.notifications n WHERE n.stream = st.s
                            ORDER BY n.dseq DESC LIMIT batch) l
        CROSS JOIN LATERAL notifyd_private.states(l.n, viewer) w
        WHERE (set_state.category IS NULL OR (l.n).category = set_state.category)
          AND CASE set_state.kind
                  WHEN 'seen' THEN (w.seen_at IS NULL) = (set_state.state IS NOT NULL)
                  WHEN 'read' THEN (w.read_at IS NULL) = (set_state.state IS NOT NULL)
                  WHEN 'archived' THEN (w.archived_at IS NULL) = (set_state.state IS NOT NULL)
                  ELSE w.snoozed_until IS DISTINCT FROM set_state.state END;
    END IF;
    IF picked IS NULL THEN
        RETURN '{}';
    END IF;
    -- One statement each (own items, known receipts, new receipts): each statement's changes
    -- take consecutive seqs and are announced in that order.
    WITH c AS (
        UPDATE notifyd.notifications n SET
            seen_at = CASE WHEN set_state.kind = 'seen' THEN state
                           WHEN set_state.kind = 'read' AND state IS NOT NULL
                           THEN coalesce(n.seen_at, state) ELSE n.seen_at END,
            seen_v = CASE WHEN set_state.kind = 'seen' THEN -1 ELSE n.seen_v END,
            read_at = CASE WHEN set_state.kind = 'read' THEN state ELSE n.read_at END,
            read_v = CASE WHEN set_state.kind = 'read' THEN -1 ELSE n.read_v END,
            archived_at = CASE WHEN set_state.kind = 'archived' THEN state ELSE n.archived_at END,
            archived_v = CASE WHEN set_state.kind = 'archived' THEN -1 ELSE n.archived_v END,
            snoozed_until = CASE WHEN set_state.kind = 'snoozed' THEN state
                                 ELSE n.snoozed_until END
        WHERE n.id = ANY (picked) AND n.stream = viewer
        RETURNING n.id
    ) SELECT coalesce(array_agg(id), '{}') INTO more FROM c;
    changed := changed || more;
    -- The user's counter row, locked to commit (after the own rows above, as an app's UPDATE
    -- locks a row, then the counter row: the same order, no deadlock): one change of the
    -- user's receipts at a time, so the update and insert below never race.
    INSERT INTO notifyd.streams AS s (stream, last_seq) VALUES (viewer, 0)
    ON CONFLICT (stream) DO NOTHING;
    PERFORM FROM notifyd.streams s WHERE s.stream = viewer FOR UPDATE;
    WITH c AS (
        UPDATE notifyd.receipts r SET
            seen_at = CASE WHEN set_state.kind = 'seen' THEN state
                           WHEN set_state.kind = 'read' AND state IS NOT NULL
                           THEN coalesce(r.seen_at, state) ELSE r.seen_at END,
            seen_v = CASE WHEN set_state.kind = 'seen' THEN -1 ELSE r.seen_v END,
            read_at = CASE WHEN set_state.kind = 'read' THEN state ELSE r.read_at END,
            read_v = CASE WHEN set_state.kind = 'read' THEN -1 ELSE r.read_v END,
            archived_at = CASE WHEN set_state.kind = 'archived' THEN state ELSE r.archived_at END,
            archived_v = CASE WHEN set_state.kind = 'archived' THEN -1 ELSE r.archived_v END,
            snoozed_until = CASE WHEN set_state.kind = 'snoozed' THEN state
                                 ELSE r.snoozed_until END
        WHERE r.ustream = viewer AND r.id = ANY (picked)
        RETURNING r.id
    ) SELECT coalesce(array_agg(id), '{}') INTO more FROM c;
    changed := changed || more;
    WITH c AS (
        INSERT INTO notifyd.receipts (ustream, id, seq, seen_at, seen_v, read_at, read_v,
                                      archived_at, archived_v, snoozed_until)
        SELECT viewer, n.id, 0,
               CASE WHEN set_state.kind = 'seen' OR set_state.kind = 'read' THEN state END,
               CASE WHEN set_state.kind = 'seen' OR (set_state.kind = 'read' AND state IS NOT NULL)
                    THEN -1 ELSE 0 END,
               CASE WHEN set_state.kind = 'read' THEN state END,
               CASE WHEN set_state.kind = 'read' THEN -1 ELSE 0 END,
               CASE WHEN set_state.kind = 'archived' THEN state END,
               CASE WHEN set_state.kind = 'archived' THEN -1 ELSE 0 END,
               CASE WHEN set_state.kind = 'snoozed' THEN state END
        FROM notifyd.notifications n
        WHERE n.id = ANY (picked) AND n.stream <> viewer
          AND NOT EXISTS (SELECT FROM notifyd.receipts r WHERE r.ustream = viewer AND r.id = n.id)
        ORDER BY n.stream, n.dseq
        RETURNING id
    ) SELECT coalesce(array_agg(id), '{}') INTO more FROM c;
    changed := changed || more;
    SELECT array_agg(x ORDER BY x) INTO changed FROM unnest(changed) x;
    RETURN changed;
END
$$;
REVOKE ALL ON FUNCTION notifyd_private.set_state(text, text, timestamptz, bigint[], text, text[], integer) FROM PUBLIC;

-- The SQL API of states, for app backends: the same meaning as the protocol's operations.
-- `ids` NULL means every item of the user (`category` narrows it); `streams` the streams the
-- user receives (NULL: its own and 'all'; name the streams of its roles). Each returns the ids whose
-- state changed ('{}' for a mark: "all" of seen, read and archived writes one row per stream).
CREATE FUNCTION notifyd.mark_seen(user_id text, ids bigint[] DEFAULT NULL,
                                  category text DEFAULT NULL, streams text[] DEFAULT NULL)
RETURNS bigint[] LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT notifyd_private.set_state(user_id, 'seen', now(), ids, category, streams)
$$;
CREATE FUNCTION notifyd.mark_read(user_id text, ids bigint[] DEFAULT NULL,
                                  category text DEFAULT NULL, streams text[] DEFAULT NULL)
RETURNS bigint[] LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT notifyd_private.set_state(user_id, 'read', now(), ids, category, streams)
$$;
CREATE FUNCTION notifyd.mark_unread(user_id text, ids bigint[] DEFAULT NULL,
                                    category text DEFAULT NULL, streams text[] DEFAULT NULL)
RETURNS bigint[] LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT notifyd_private.set_state(user_id, 'read', NULL, ids, category, streams)
$$;
CREATE FUNCTION notifyd.archive(user_id text, ids bigint[] DEFAULT NULL,
                                category text DEFAULT NULL, streams text[] DEFAULT NULL)
RETURNS bigint[] LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT notifyd_private.set_state(user_id, 'archived', now(), ids, category, streams)
$$;
CREATE FUNCTION notifyd.unarchive(user_id text, ids bigint[] DEFAULT NULL,
                                  category text DEFAULT NULL, streams text[] DEFAULT NULL)
RETURNS bigint[] LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT notifyd_private.set_state(user_id, 'archived', NULL, ids, category, streams)
$$;
CREATE FUNCTION notifyd.snooze(user_id text, ids bigint[], until timestamptz,
                               category text DEFAULT NULL, streams text[] DEFAULT NULL)
RETURNS bigint[] LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF until IS NULL THEN
        RAISE EXCEPTION 'notifyd: snooze needs a time to wake the items at'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN notifyd_private.set_state(user_id, 'snoozed', until, ids, category, streams);
END
$$;
REVOKE ALL ON FUNCTION notifyd.mark_seen(text, bigint[], text, text[]),
    notifyd.mark_read(text, bigint[], text, text[]),
    notifyd.mark_unread(text, bigint[], text, text[]),
    notifyd.archive(text, bigint[], text, text[]),
    notifyd.unarchive(text, bigint[], text, text[]),
    notifyd.snooze(text, bigint[], timestamptz, text, text[]) FROM PUBLIC;

-- Wakes at most `batch` snoozed items (own and receipts) whose time has come: each is then a
-- change like any other. Returns how many it woke. The daemon calls it every second, one
-- process at a time (an advisory lock), and each row is taken with SKIP LOCKED.
CREATE FUNCTION notifyd.wake(batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms' AS $$
DECLARE
    own    integer;
    theirs integer;
BEGIN
    UPDATE notifyd.notifications SET snoozed_until = NULL
    WHERE id = ANY (ARRAY(SELECT id FROM notifyd.notifications
                          WHERE snoozed_until <= now() ORDER BY snoozed_until
                          LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS own = ROW_COUNT;
    UPDATE notifyd.receipts r SET snoozed_until = NULL
    FROM (SELECT ustream, id FROM notifyd.receipts
          WHERE snoozed_until <= now() ORDER BY snoozed_until
          LIMIT batch FOR UPDATE SKIP LOCKED) d
    WHERE r.ustream = d.ustream AND r.id = d.id;
    GET DIAGNOSTICS theirs = ROW_COUNT;
    RETURN own + theirs;
END
$$;
REVOKE ALL ON FUNCTION notifyd.wake(integer) FROM PUBLIC;

-- The counts of a user over the given streams (its own and the shared ones it receives), per
-- stream and category ('' for none): unread and unseen items, neither archived nor snoozed.
-- `last_seq` is each stream's as of this snapshot (the daemon adds the shared items it
-- publishes after it). An own stream is read from its tallies; a shared stream per category,
-- as the items above the user's marks (notifyd_private.alive, from notifyd.shared_tallies),
-- corrected by the user's receipts (where the user's own state differs from the marks'). None
-- of it grows with the stream's length.
-- (Generic plans: its queries are a few index probes each, which PostgreSQL would otherwise
-- plan anew at every call, at ten times the cost of running them.)
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
        FOR cat IN SELECT DISTINCT t.category FROM notifyd.shared_tallies t
                   WHERE t.stream = one AND t.level = 16 AND t.items > 0 LOOP
            t_read := notifyd_private.marked_upto(viewer, one, 'read', cat);
            t_seen := notifyd_private.marked_upto(viewer, one, 'seen', cat);
            t_arch := notifyd_private.marked_upto(viewer, one, 'archived', cat);
            -- the user's receipts: where their own state differs from the marks'
            -- (notifyd_private.states, written out: one query, not a call per receipt)
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
REVOKE ALL ON FUNCTION notifyd.counts(text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyd.to_wire(notifyd.notifications, text) FROM PUBLIC;

-- Notifications with a category: the functions of version 1, with it last.
DROP FUNCTION notifyd.notify(text, text, text, text, jsonb, text, text);
DROP FUNCTION notifyd.notify_role(text, text, text, text, jsonb, text, text);
DROP FUNCTION notifyd.broadcast(text, text, text, jsonb, text, text);
CREATE FUNCTION notifyd.notify(
    user_id text, type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL,
    category text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO notifyd.notifications (user_id, type, title, message, data, priority, action_url,
                                       category)
    VALUES (notify.user_id, notify.type, notify.title, notify.message,
            coalesce(notify.data, '{}'), coalesce(notify.priority, 'medium'), notify.action_url,
            notify.category)
    RETURNING id
$$;
CREATE FUNCTION notifyd.notify_role(
    role text, type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL,
    category text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO notifyd.notifications (role, type, title, message, data, priority, action_url,
                                       category)
    VALUES (notify_role.role, notify_role.type, notify_role.title, notify_role.message,
            coalesce(notify_role.data, '{}'), coalesce(notify_role.priority, 'medium'),
            notify_role.action_url, notify_role.category)
    RETURNING id
$$;
CREATE FUNCTION notifyd.broadcast(
    type text, title text, message text,
    data jsonb DEFAULT '{}', priority text DEFAULT 'medium', action_url text DEFAULT NULL,
    category text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO notifyd.notifications (stream, type, title, message, data, priority, action_url,
                                       category)
    VALUES ('all', broadcast.type, broadcast.title, broadcast.message,
            coalesce(broadcast.data, '{}'), coalesce(broadcast.priority, 'medium'),
            broadcast.action_url, broadcast.category)
    RETURNING id
$$;

REVOKE ALL ON FUNCTION notifyd_private.receipt_version(), notifyd_private.after_receipt(),
    notifyd_private.mark_version(), notifyd_private.after_mark() FROM PUBLIC;
