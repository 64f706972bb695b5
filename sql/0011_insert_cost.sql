-- notifyd schema, version 11: what an INSERT costs the database, cut.
-- A function in SQL that PostgreSQL cannot inline into its caller (one holding a subquery or
-- a data-changing statement, or a set-returning one given a subquery) has its body planned
-- anew at every statement that calls it; a PL/pgSQL function keeps its plans for the session.
-- Each INSERT ran four such SQL functions (the CHECK on actions, the two counter updates, the
-- events of the new rows), which took over half of notifyd.notify()'s time in the database;
-- a user's change of a shared item ran a fifth (its events). They are the same functions in
-- PL/pgSQL: same names, arguments and results (so the grants an operator gave and the
-- constraints that call them stay), same answers.

-- The CHECK on notifications.actions, for every row written: most rows have none.
CREATE OR REPLACE FUNCTION notifyd_private.valid_actions(actions jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF actions = '[]'::jsonb THEN
        RETURN true;
    END IF;
    RETURN jsonb_typeof(actions) = 'array' AND jsonb_array_length(actions) <= 3
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
           = jsonb_array_length(actions);
END
$$;

-- Adds to a stream's tallies of a category.
CREATE OR REPLACE FUNCTION notifyd_private.tally(stream text, category text, unread int, unseen int)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF tally.unread <> 0 OR tally.unseen <> 0 THEN
        INSERT INTO notifyd.tallies AS t (stream, category, unread, unseen)
        VALUES (tally.stream, coalesce(tally.category, ''), tally.unread, tally.unseen)
        ON CONFLICT ON CONSTRAINT tallies_pkey DO UPDATE
            SET unread = t.unread + EXCLUDED.unread, unseen = t.unseen + EXCLUDED.unseen;
    END IF;
END
$$;

-- Adds to a shared stream's count of the items delivered in one run of seqs.
CREATE OR REPLACE FUNCTION notifyd_private.shared_tally(stream text, category text, dseq bigint,
                                                        items int)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notifyd.shared_tallies AS t (stream, category, level, bucket, items)
    VALUES (shared_tally.stream, coalesce(shared_tally.category, ''), 8, shared_tally.dseq >> 8,
            shared_tally.items),
           (shared_tally.stream, coalesce(shared_tally.category, ''), 16, shared_tally.dseq >> 16,
            shared_tally.items)
    ON CONFLICT ON CONSTRAINT shared_tallies_pkey DO UPDATE SET items = t.items + EXCLUDED.items;
END
$$;

-- The events of rows delivered ("n"): {"k":"n", "n": wire, "t": when} (a reference {"k":"n",
-- "id", "s", "q", "t", "c": category} when too large). `own`: of a user stream.
CREATE OR REPLACE FUNCTION notifyd_private.new_events(delivered notifyd.notifications[], t float8)
RETURNS TABLE (stream text, seq bigint, own boolean, ev jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT r.stream, r.seq, r.user_id IS NOT NULL,
           CASE WHEN octet_length(w::text) <= 7000
                THEN jsonb_build_object('k', 'n', 'n', w, 't', new_events.t)
                ELSE jsonb_build_object('k', 'n', 'id', r.id, 's', r.stream, 'q', r.seq,
                                        't', new_events.t, 'c', r.category)
           END
    FROM unnest(delivered) r
    CROSS JOIN LATERAL notifyd.to_wire(r) AS w;
END
$$;

-- The events of users' receipts of shared items changed ("m", with the user's stream).
CREATE OR REPLACE FUNCTION notifyd_private.receipt_events(changed notifyd.receipts[])
RETURNS TABLE (ustream text, seq bigint, ev jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT r.ustream, r.seq,
           CASE WHEN octet_length(w::text) <= 7000
                THEN jsonb_build_object('k', 'm', 'n', w, 's', r.ustream, 'q', r.seq)
                ELSE jsonb_build_object('k', 'm', 'id', r.id, 's', r.ustream, 'q', r.seq,
                                        'v', r.ustream, 'i', n.stream)
           END
    FROM unnest(changed) r
    JOIN notifyd.notifications n ON n.id = r.id
    CROSS JOIN LATERAL notifyd.to_wire(n, r.ustream) AS w;
END
$$;
