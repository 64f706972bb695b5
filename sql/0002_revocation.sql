-- notifyd schema, version 2: revoking a user's access. notifyd.revoke_user('42') records the
-- moment; every daemon closes 42's live connections with 4003 when it hears of it (NOTIFY at
-- commit), and refuses 42's tokens issued (iat) at or before that moment, also after restarts.

CREATE TABLE notifyd.revocations (
    user_id    text        PRIMARY KEY CHECK (user_id <> ''),
    revoked_at timestamptz NOT NULL
);

CREATE FUNCTION notifyd.revoke_user(user_id text) RETURNS timestamptz
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
    PERFORM notifyd.send_events(ARRAY[jsonb_build_object(
        'k', 'x', 'user', revoke_user.user_id, 'at', extract(epoch FROM at))]);
    RETURN at;
END
$$;
