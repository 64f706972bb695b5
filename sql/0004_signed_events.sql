-- notifyd schema, version 4: only what really committed reaches clients.
-- NOTIFY needs no privilege: any role that can connect may send any payload on channel
-- 'notifyd'. So every payload is now signed (HMAC-SHA256, with a key only the owner of these
-- schemas can read) and numbered (a nonce from a sequence), and the daemon drops a payload
-- whose signature does not verify or whose nonce it has already seen.
-- 1. notifyd_private: the channel keys, the nonce sequence and the one function that signs
--    and sends. No grant on it to anyone: it is not part of the app's API.
-- 2. The trigger functions that produce events run as their owner (SECURITY DEFINER), so an
--    app role's statements still announce their changes; EXECUTE on them is revoked from
--    PUBLIC, so no other role can attach them to a table of its own, and each checks the
--    table it fires for.
-- 3. Revocations are announced by a trigger on notifyd.revocations (insert, update and delete);
--    the daemon then reads the table, which holds what committed.
-- 5. Retention's deletes are silent only by a proof no other role can give: prune() runs as
--    the owner, in a transaction that has written nothing else, and leaves its transaction id
--    in notifyd_private.pruning while it deletes (a setting, which any role may set, was the
--    sign before).
-- 4. Events: an INSERT's unread count travels on the last row of each stream only (one
--    unread-count frame per statement, not one per row); read marks are chunked by bytes, not
--    by count (ids of 16 digits overflowed a payload); an item marked unread again is sent
--    whole ("k":"m"), so every device shows it unread.
-- Payload: <64 hex digits of HMAC-SHA256 over the rest> {"k": key id, "i": nonce, "e": [events]}

-- IF NOT EXISTS: the schema outlives a DROP SCHEMA notifyd CASCADE, and keeps its keys.
CREATE SCHEMA IF NOT EXISTS notifyd_private;
REVOKE ALL ON SCHEMA notifyd_private FROM PUBLIC;

-- The signing keys. The newest key old enough for every daemon to have read it (they re-read
-- the keys every few seconds) signs; older ones stay valid until deleted.
CREATE TABLE IF NOT EXISTS notifyd_private.channel_keys (
    id         integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret     bytea       NOT NULL CHECK (octet_length(secret) = 32),
    inner_pad  bytea       NOT NULL CHECK (octet_length(inner_pad) = 64),
    outer_pad  bytea       NOT NULL CHECK (octet_length(outer_pad) = 64),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON notifyd_private.channel_keys FROM PUBLIC;

CREATE SEQUENCE IF NOT EXISTS notifyd_private.payload_nonce;
REVOKE ALL ON notifyd_private.payload_nonce FROM PUBLIC;

-- A new random key, with its HMAC pads (RFC 2104: the key zero-padded to SHA-256's 64-byte
-- block, XOR 0x36 and 0x5c) computed once, so that signing is two sha256() calls.
-- gen_random_uuid() draws from the server's strong random source; three of them, hashed.
CREATE OR REPLACE FUNCTION notifyd_private.new_channel_key() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    secret bytea := sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                                      || gen_random_uuid()::text, 'UTF8'));
    block  bytea := secret || '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    ipad   bytea := block;
    opad   bytea := block;
    key_id integer;
BEGIN
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(block, i) # 54);
        opad := set_byte(opad, i, get_byte(block, i) # 92);
    END LOOP;
    INSERT INTO notifyd_private.channel_keys (secret, inner_pad, outer_pad)
    VALUES (secret, ipad, opad) RETURNING id INTO key_id;
    RETURN key_id;
END
$$;
REVOKE ALL ON FUNCTION notifyd_private.new_channel_key() FROM PUBLIC;

SELECT notifyd_private.new_channel_key()
WHERE NOT EXISTS (SELECT FROM notifyd_private.channel_keys);

-- Signs and sends events on channel 'notifyd', several to a payload while it stays under
-- NOTIFY's 8000-byte limit (the signature and header take about 100 of them).
CREATE OR REPLACE FUNCTION notifyd_private.send_events(events jsonb[]) RETURNS void
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
        ev := CASE WHEN j <= n THEN events[j]::text END;
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
REVOKE ALL ON FUNCTION notifyd_private.send_events(jsonb[]) FROM PUBLIC;

-- A trigger function's first line: it announces changes of its own table only.
CREATE OR REPLACE FUNCTION notifyd_private.check_table(tg_relid oid, expected regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF tg_relid IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'notifyd: this trigger function is for % only', expected
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION notifyd_private.check_table(oid, regclass) FROM PUBLIC;

-- AFTER INSERT, per statement: one event per row, {"k":"n", "n": <notification>, "t": when
-- the statement ended}, or a reference {"k":"n", "id", "s", "q", "t"} for a row whose wire
-- form would not fit a payload (the daemon fetches it). The last row of each user stream
-- carries "u", the stream's unread count as of this commit (the counter row stays locked
-- until commit, so it is exact in commit order).
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
             ELSE jsonb_build_object('k', 'n', 'id', r.id, 's', r.stream, 'q', r.seq, 't', t)
        END || CASE WHEN r.seq = l.last_seq THEN jsonb_build_object('u', s.unread)
                    ELSE '{}'::jsonb END
        ORDER BY r.stream, r.seq)
    INTO events
    FROM new_rows r
    CROSS JOIN LATERAL notifyd.to_wire(r) AS w
    LEFT JOIN (SELECT stream, max(seq) AS last_seq FROM new_rows
               WHERE user_id IS NOT NULL GROUP BY stream) l ON l.stream = r.stream
    JOIN notifyd.streams s ON s.stream = r.stream;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- AFTER UPDATE, per statement, for rows whose read state changed: their streams' unread
-- counters move, and
-- - rows marked read: {"k":"r", "s": stream, "ids": [...], "at": readAt, "o": origin}, the ids
--   chunked to at most about 6,000 bytes. "o" is the connection that asked (the daemon sets
--   notifyd.origin), so it is not told twice;
-- - rows marked unread: {"k":"m", "n": <notification>} each (or a reference {"k":"m", "id",
--   "s", "q"} when too large), which clients get whole as notification:updated;
-- then {"k":"c", "s": stream, "u": unread} once per user stream that changed.
CREATE OR REPLACE FUNCTION notifyd.after_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    origin text := left(nullif(current_setting('notifyd.origin', true), ''), 64);
    events jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
    WITH changed AS (
        SELECT n.stream, n.id, n.seq, n.read_at, (o.read_at IS NULL) AS was_unread
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
        SELECT c.stream, c.read_at, c.id,
               (sum(octet_length(c.id::text) + 1) OVER w - 1) / 6000 AS chunk
        FROM changed c
        WHERE c.read_at IS NOT NULL
        WINDOW w AS (PARTITION BY c.stream, c.read_at ORDER BY c.id)
    )
    SELECT array_agg(ev ORDER BY stream, ord, sub) INTO events FROM (
        SELECT ch.stream, 1 AS ord, ch.chunk::numeric AS sub, jsonb_build_object(
            'k', 'r', 's', ch.stream, 'ids', jsonb_agg(ch.id ORDER BY ch.id),
            'at', to_char(ch.read_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'o', origin) AS ev
        FROM chunks ch
        GROUP BY ch.stream, ch.read_at, ch.chunk
        UNION ALL
        SELECT c.stream, 2, c.seq, CASE WHEN octet_length(w::text) <= 7000
                                        THEN jsonb_build_object('k', 'm', 'n', w)
                                        ELSE jsonb_build_object('k', 'm', 'id', c.id,
                                                                's', c.stream, 'q', c.seq)
                                   END
        FROM changed c JOIN new_rows n ON n.id = c.id
        CROSS JOIN LATERAL notifyd.to_wire(n) AS w
        WHERE c.read_at IS NULL
        UNION ALL
        SELECT d.stream, 3, 0, jsonb_build_object('k', 'c', 's', d.stream, 'u', d.unread)
        FROM deltas d
    ) e;
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- AFTER DELETE, per statement: as in version 3 ({"k":"d", "id", "s"} per row unless prune()
-- deletes, then each changed unread count), sent signed.
CREATE OR REPLACE FUNCTION notifyd.after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pruning boolean := EXISTS (SELECT FROM notifyd_private.pruning
                               WHERE txid = pg_current_xact_id());
    events  jsonb[];
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.notifications');
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
    PERFORM notifyd_private.send_events(events);
    RETURN NULL;
END
$$;

-- AFTER INSERT, UPDATE or DELETE of a revocation, per row: {"k":"x", "user", "at": seconds}.
-- The daemon takes it as "read notifyd.revocations again": a row inserted and deleted in one
-- transaction revokes nobody.
CREATE FUNCTION notifyd.after_revocation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r notifyd.revocations := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
BEGIN
    PERFORM notifyd_private.check_table(TG_RELID, 'notifyd.revocations');
    PERFORM notifyd_private.send_events(ARRAY[jsonb_build_object(
        'k', 'x', 'user', r.user_id, 'at', extract(epoch FROM r.revoked_at))]);
    RETURN NULL;
END
$$;

CREATE TRIGGER revocations_announce
    AFTER INSERT OR UPDATE OR DELETE ON notifyd.revocations
    FOR EACH ROW EXECUTE FUNCTION notifyd.after_revocation();

-- The transactions of prune() while it deletes: their deletes are retention's (not announced).
CREATE TABLE IF NOT EXISTS notifyd_private.pruning (txid xid8 PRIMARY KEY);
REVOKE ALL ON notifyd_private.pruning FROM PUBLIC;

-- As in version 3, but as the owner, with the proof above instead of a setting, and only in a
-- transaction that has written nothing yet (so no row of the caller's own can be removed
-- unannounced).
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
    ), floors AS (
        UPDATE notifyd.streams s
        SET pruned_below = greatest(s.pruned_below, f.max_seq + 1)
        FROM (SELECT stream, max(seq) AS max_seq FROM gone GROUP BY stream) f
        WHERE s.stream = f.stream
        RETURNING 1
    )
    SELECT count(*) INTO deleted FROM gone;
    DELETE FROM notifyd_private.pruning WHERE txid = pg_current_xact_id();
    RETURN deleted;
END
$$;

-- revoke_user() records the moment; the trigger above announces it.
CREATE OR REPLACE FUNCTION notifyd.revoke_user(user_id text) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz := clock_timestamp();
BEGIN
    IF revoke_user.user_id IS NULL OR revoke_user.user_id = '' THEN
        RAISE EXCEPTION 'notifyd: revoke_user needs a user id' USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO notifyd.revocations AS r (user_id, revoked_at)
    VALUES (revoke_user.user_id, at)
    ON CONFLICT ON CONSTRAINT revocations_pkey DO UPDATE SET revoked_at = EXCLUDED.revoked_at;
    RETURN at;
END
$$;

REVOKE ALL ON FUNCTION notifyd.after_insert(), notifyd.after_update(), notifyd.after_delete(),
    notifyd.after_revocation() FROM PUBLIC;
DROP FUNCTION notifyd.send_events(jsonb[]);
