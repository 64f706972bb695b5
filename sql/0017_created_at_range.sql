-- notifyd schema, version 17: a row's created_at is a time the daemon can read and page from.
-- A feed page's `next` carries the last item's created_at, which the daemon reads as a Python
-- datetime and sends back to the next page's query. PostgreSQL takes years up to 294276 and
-- back to 4713 BC: a created_at outside the years 1 to 9999 made every page that reached its
-- row fail with internal-error, for every user of its stream (one such row in `all`: everyone's
-- pages), and the two datetimes at the very ends are sent back as -infinity and infinity (the
-- driver's mapping), so that a page ending at 9999-12-31 23:59:59.999999 came back unchanged,
-- forever. The open range between them replaces `isfinite(created_at)`. NOT VALID as before:
-- the rows already there are not read again (one outside the range, written before this
-- version, is put right by an UPDATE of its created_at or a DELETE).
ALTER TABLE notifyd.notifications
    DROP CONSTRAINT notifications_created_at_check,
    ADD CONSTRAINT notifications_created_at_check
        CHECK (created_at > timestamptz '0001-01-01 00:00:00+00'
               AND created_at < timestamptz '9999-12-31 23:59:59.999999+00') NOT VALID;
