-- notifyd schema, version 12: the protocol's Notification object built for less.
-- jsonb_build_object() looks up how to convert each of its 52 arguments at every call: about
-- 16 µs a row, the larger part of a sync-request's time in the database and of the events of
-- an INSERT. The object is now a row of a composite type, whose fields are the object's keys:
-- to_jsonb() of it (the triggers' events, notifyd.wire_of()) is the same jsonb for a third
-- less, and row_to_json() of it (the text the daemon sends, a sync's or a page's rows) the
-- same object for a quarter of the cost.

CREATE TYPE notifyd.wire AS (
    id bigint, stream text, seq bigint, "deliveredSeq" bigint, type text, category text,
    title text, message text, data jsonb, priority text, "actionUrl" text, actions jsonb,
    "groupKey" text, "groupCount" integer, actors text[], seen boolean, "seenAt" text,
    read boolean, "readAt" text, archived boolean, "archivedAt" text, "snoozedUntil" text,
    "interactedAt" text, action text, "expiresAt" text, "createdAt" text
);

-- The Notification object of a row with the given states of its user, as a row.
CREATE FUNCTION notifyd.wire_row(
    n notifyd.notifications, seen_at timestamptz, read_at timestamptz,
    archived_at timestamptz, snoozed_until timestamptz, interacted_at timestamptz, action text
) RETURNS notifyd.wire
LANGUAGE sql STABLE AS $$
    SELECT ROW(n.id, n.stream, n.seq, n.dseq, n.type, n.category, n.title, n.message, n.data,
               n.priority, n.action_url, n.actions, n.group_key, n.group_count, n.actors,
               seen_at IS NOT NULL, notifyd.wire_time(seen_at),
               read_at IS NOT NULL, notifyd.wire_time(read_at),
               archived_at IS NOT NULL, notifyd.wire_time(archived_at),
               notifyd.wire_time(snoozed_until), notifyd.wire_time(interacted_at), action,
               notifyd.wire_time(n.expires_at), notifyd.wire_time(n.created_at))::notifyd.wire
$$;

-- As in version 8, from the row above.
CREATE OR REPLACE FUNCTION notifyd.wire_of(
    n notifyd.notifications, seen_at timestamptz, read_at timestamptz,
    archived_at timestamptz, snoozed_until timestamptz, interacted_at timestamptz, action text
) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT to_jsonb(notifyd.wire_row(n, seen_at, read_at, archived_at, snoozed_until,
                                     interacted_at, action))
$$;
