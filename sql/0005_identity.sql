-- notifyd schema, version 5: who a notification is for.
-- 1. Role names are normalised as the daemon normalises the roles of tokens (notifyd/roles.py):
--    A-Z lower-cased by translate(), never by lower(), whose result depends on the database's
--    locale (lower('İT') differs between locales and from Python's, an ICU tr-TR database
--    lowers 'I' to 'ı', and LC_CTYPE 'C' leaves 'Ä' alone); then 1 to 128 visible ASCII
--    characters, or the row is refused. No token role can name another role's stream.
-- 2. The recipient check: a row with neither user_id nor role but a stream other than 'all'
--    passed the CHECK of version 1 (NULL is not a failure), into any stream ('user:42',
--    'role:admin', '@presence'). The CHECK is now never NULL, and the insert trigger refuses
--    such a row before it takes a seq.

-- The role as notifyd names it; raises check_violation for a string that is no role name.
CREATE OR REPLACE FUNCTION notifyd.role_name(role text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    named text := translate(role, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz');
BEGIN
    -- [!-~]: the code points 0x21 to 0x7E, whatever the collation
    IF named IS NOT NULL AND named !~ '^[!-~]{1,128}$' THEN
        RAISE EXCEPTION 'notifyd: % is not a role name (1 to 128 visible ASCII characters)',
            quote_literal(left(role, 40))
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN named;
END
$$;

-- As in version 1, with the role named by notifyd.role_name(), and a row whose stream is not its
-- recipient's refused before it takes a seq (the table's CHECK would refuse it later, too).
-- As the owner (SECURITY DEFINER), like the other trigger functions: an app role needs no
-- grant on notifyd.streams, so it cannot set a stream's seq or counts.
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
    RETURN NEW;
END
$$;

-- Rows the old CHECK let through are exactly those with neither user_id nor role and a stream
-- other than 'all'. They are not guessed at: the migration stops and says how to find them.
DO $$
DECLARE
    bad   bigint;
    first text;
BEGIN
    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE n <= 5)
    INTO bad, first
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM notifyd.notifications
          WHERE user_id IS NULL AND role IS NULL AND stream <> 'all') b;
    IF bad > 0 THEN
        RAISE EXCEPTION 'notifyd: % notifications have neither user_id nor role but a stream other than ''all'' (ids %); nobody may receive them: delete them (DELETE FROM notifyd.notifications WHERE user_id IS NULL AND role IS NULL AND stream <> ''all'') and migrate again',
            bad, first || CASE WHEN bad > 5 THEN ', ...' ELSE '' END
            USING ERRCODE = 'check_violation';
    END IF;
END
$$;

-- Never NULL: coalesce(..., false). Added and validated at once: the migration is one
-- transaction, so NOT VALID and a later VALIDATE would hold the same lock just as long.
ALTER TABLE notifyd.notifications DROP CONSTRAINT notifications_stream_check;
ALTER TABLE notifyd.notifications ADD CONSTRAINT notifications_stream_check CHECK (coalesce(
    (stream = 'all' AND user_id IS NULL AND role IS NULL)
    OR (user_id IS NOT NULL AND role IS NULL AND stream = 'user:' || user_id)
    OR (role IS NOT NULL AND user_id IS NULL AND stream = 'role:' || role), false));

-- A user id is what a token's user claim may hold (at most 256 characters): a longer one could
-- never connect, and its stream name would crowd the events out of a NOTIFY payload.
ALTER TABLE notifyd.notifications ADD CONSTRAINT notifications_user_id_length
    CHECK (char_length(user_id) <= 256);
ALTER TABLE notifyd.revocations ADD CONSTRAINT revocations_user_id_length
    CHECK (char_length(user_id) <= 256);

-- Like the other trigger functions: no role may attach it to a table of its own.
REVOKE ALL ON FUNCTION notifyd.assign_seq() FROM PUBLIC;
