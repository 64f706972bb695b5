# Only what committed reaches clients: NOTIFY payloads are signed in the database and checked by
# the daemon (notifyd/core/channel.py, sql/0004_signed_events.sql). A role that can connect but
# holds no grant forges, modifies and replays payloads; an app role with the README's grants cannot
# sign either; nothing they send changes what a client sees, and every refusal is counted.
from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
import pytest_asyncio
from faults_support import eventually, logged_errors
from support import Daemon, admin_exec
from units.fakes import signed_payload

_roles = itertools.count()


# -- the pure check --------------------------------------------------------------------------


# -- against the database --------------------------------------------------------------------


@pytest_asyncio.fixture
async def hostile(daemon: Daemon) -> AsyncIterator[asyncpg.Connection]:
    """A connection of a role that may connect and holds no grant at all."""
    role = f"notifyd_hostile_{os.getpid()}_{next(_roles)}"
    await admin_exec(daemon.dsn, f"CREATE ROLE {role} LOGIN")
    conn = await asyncpg.connect(daemon.dsn, user=role)
    try:
        yield conn
    finally:
        await conn.close()
        await admin_exec(daemon.dsn, f"DROP ROLE {role}")


def _forged_new(stream: str, seq: int, nid: int) -> dict[str, object]:
    return {
        "k": "n",
        "u": 0,
        "t": 0,
        "n": {
            "id": nid,
            "stream": stream,
            "seq": seq,
            "type": "security",
            "title": "Verify your account",
            "message": "Click here",
            "data": {},
            "priority": "high",
            "actionUrl": "https://phish.example/login",
            "read": False,
            "readAt": None,
            "createdAt": "2026-01-01T00:00:00.000000Z",
        },
    }


async def _refused(daemon: Daemon) -> dict[str, int]:
    return dict(daemon.app.metrics.notify_refused)


async def test_a_role_without_grants_cannot_forge_events(
    daemon: Daemon, hostile: asyncpg.Connection
) -> None:
    victim = await daemon.connect("42")
    bystander = await daemon.connect("7")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await hostile.fetchval("SELECT notifyd.notify('42', 't', 'x', 'y')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await hostile.fetch("SELECT * FROM notifyd_private.channel_keys")
    forged_events = [
        _forged_new("user:42", 10**12, 999),
        _forged_new("all", 10**12, 998),
        {"k": "x", "user": "42", "at": 4102444800.0},
        {"k": "c", "s": "user:42", "u": 1000},
    ]
    payloads = [
        orjson.dumps(forged_events).decode(),  # the unsigned form of earlier versions
        signed_payload(os.urandom(32), 1, 10**9, forged_events),  # a guessed key
        signed_payload(os.urandom(32), 99, 10**9, forged_events),  # a key that does not exist
        "f" * 64 + orjson.dumps({"k": 1, "i": 10**9, "e": forged_events}).decode(),
        "not even json",
    ]
    for payload in payloads:
        await hostile.execute("SELECT pg_notify('notifyd', $1)", payload)
    await eventually(
        lambda: sum(daemon.app.metrics.notify_refused.values()) == 5,
        5,
        "every forged payload refused",
    )
    assert await _refused(daemon) == {"malformed": 2, "unknown-key": 1, "signature": 2}
    # nothing reached the clients; the real notifications after the forged seq still do
    assert await victim.quiet(0.3) == [] and await bystander.quiet(0.1) == []
    await daemon.notify("42", "real")
    await daemon.sql("SELECT notifyd.broadcast('news', 'for all', '')")
    for client in (victim, bystander):
        frames = [f for f in await client.quiet(0.5) if f["type"] == "notification:new"]
        assert [f["data"]["notification"]["title"] for f in frames] == (
            ["real", "for all"] if client is victim else ["for all"]
        )
    # the forged revocation closed nothing and refuses no token
    fresh = await daemon.connect("42")
    await fresh.close()
    assert daemon.app.admission.revoked == {}
    metrics = await asyncio.to_thread(_scrape, daemon.app.port)
    assert 'notifyd_notify_payloads_refused_total{reason="signature"} 2.0' in metrics


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


async def test_modified_and_replayed_payloads_change_nothing(
    daemon: Daemon, hostile: asyncpg.Connection
) -> None:
    """The hostile role LISTENs too (that needs no grant), so it holds genuine payloads."""
    heard: list[str] = []
    await hostile.add_listener("notifyd", lambda _c, _p, _ch, payload: heard.append(payload))
    client = await daemon.connect("42")
    await daemon.notify("42", "genuine")
    assert (await client.next_data("notification:new"))["notification"]["title"] == "genuine"
    await client.expect("notification:unread-count")
    await eventually(lambda: len(heard) == 1, 5, "the hostile listener hears the payload")
    genuine = heard[0]
    modified = genuine.replace('"genuine"', '"phished"').replace(
        '"actionUrl": null', '"actionUrl": "https://phish.example"'
    )
    assert modified != genuine
    for payload in (modified, genuine, genuine):
        await hostile.execute("SELECT pg_notify('notifyd', $1)", payload)
    await eventually(
        lambda: sum(daemon.app.metrics.notify_refused.values()) == 3, 5, "the copies refused"
    )
    assert await _refused(daemon) == {"signature": 1, "replayed": 2}
    # a device that connects after the original: a replay is still no news to it
    late = await daemon.connect("42")
    await hostile.execute("SELECT pg_notify('notifyd', $1)", genuine)
    assert await client.quiet(0.3) == [] and await late.quiet(0.1) == []


async def test_a_replay_from_before_the_listen_connection_is_checked_against_the_table(
    daemon: Daemon, hostile: asyncpg.Connection
) -> None:
    heard: list[str] = []
    await hostile.add_listener("notifyd", lambda _c, _p, _ch, payload: heard.append(payload))
    client = await daemon.connect("42")
    await daemon.notify("42", "first")
    await client.expect("notification:new")
    await eventually(lambda: len(heard) == 1, 5, "the payload heard")
    # the row is deleted; then the LISTEN connection is cut: the daemon forgets what it saw
    await daemon.sql("DELETE FROM notifyd.notifications")
    pid = daemon.app.listener.backend_pid
    await daemon.sql("SELECT pg_terminate_backend($1)", pid)
    await eventually(
        lambda: daemon.app.listener.up and daemon.app.listener.backend_pid != pid,
        10,
        "the LISTEN connection back",
    )
    client.drop_backlog()
    await client.quiet(0.2)
    late = await daemon.connect("42")
    stale_before = daemon.app.channel.stale
    captured = list(heard)  # the insert's payload and the deletion's (it hears its own too)
    for payload in captured:
        await hostile.execute("SELECT pg_notify('notifyd', $1)", payload)
    await eventually(
        lambda: daemon.app.channel.stale == stale_before + len(captured),
        5,
        "the replays taken as stale",
    )
    # the notification is gone from the table: the replay brings it back to no one
    assert await client.quiet(0.3) == [] and await late.quiet(0.1) == []
    await daemon.notify("42", "second")
    assert (await late.next_data("notification:new"))["notification"]["title"] == "second"


async def test_an_app_role_cannot_sign_events_either(daemon: Daemon) -> None:
    """The README's grants let an app write notifications, not sign what it likes: it cannot
    read the keys, call the signer, or attach the trigger functions to a table of its own."""
    role = f"notifyd_app_{os.getpid()}_{next(_roles)}"
    await admin_exec(
        daemon.dsn,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA notifyd TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON notifyd.notifications, "
        f"notifyd.revocations TO {role}",
    )
    conn = await asyncpg.connect(daemon.dsn, user=role)
    try:
        client = await daemon.connect("42")
        await conn.fetchval("SELECT notifyd.notify('42', 't', 'from the app', '')")
        assert (await client.next_data("notification:new"))["notification"][
            "title"
        ] == "from the app"
        for statement in (
            "UPDATE notifyd.streams SET last_seq = 1000000 WHERE stream = 'user:42'",
            "INSERT INTO notifyd.removals (stream, seq, id) VALUES ('user:42', 99, 1)",
            "SELECT notifyd.prune(interval '0', 10)",  # a silent delete of anyone's items
            "SELECT * FROM notifyd.removals",
            "CREATE TEMP TABLE moved (LIKE notifyd.notifications); CREATE TRIGGER v BEFORE "
            "UPDATE ON moved FOR EACH ROW EXECUTE FUNCTION notifyd.next_version()",
            "INSERT INTO notifyd.schema_migrations VALUES (99, '0099_skip.sql')",
            "SELECT * FROM notifyd_private.channel_keys",
            "SELECT notifyd_private.send_events(ARRAY['{}'::jsonb])",
            "CREATE TEMP TABLE mine (id bigint, stream text, user_id text, read_at "
            "timestamptz); CREATE TRIGGER t AFTER UPDATE ON mine REFERENCING OLD TABLE AS "
            "old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "
            "notifyd.after_update()",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        # its UPDATE makes a version; it cannot move a row's seq or where it was delivered
        # nor give it a new id (GENERATED ALWAYS lets `SET id = DEFAULT` through)
        for change in ("seq = seq + 1000", "dseq = dseq + 1000", "id = DEFAULT"):
            with pytest.raises(asyncpg.CheckViolationError, match="cannot change"):
                await conn.execute(f"UPDATE notifyd.notifications SET {change}")
    finally:
        await conn.close()
        await admin_exec(daemon.dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_no_role_may_run_a_function_that_signs_or_acts_as_the_owner(daemon: Daemon) -> None:
    """A function of notifyd_private that runs as the owner (the ones that sign events among
    them) is executable by no role but the owner (and superusers), through PUBLIC or a grant:
    a grant of USAGE on the schema, by mistake, would still not let a role sign an event."""
    open_to_public = await daemon.sql(
        "SELECT coalesce(array_agg(p.oid::regprocedure::text), '{}') FROM pg_proc p "
        "JOIN pg_namespace s ON s.oid = p.pronamespace "
        "WHERE s.nspname = 'notifyd_private' AND p.prosecdef "
        "AND EXISTS (SELECT FROM pg_roles r WHERE NOT r.rolsuper AND r.oid <> p.proowner "
        "            AND has_function_privilege(r.oid, p.oid, 'EXECUTE'))"
    )
    assert open_to_public == []
    signers = await daemon.sql(
        "SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text) "
        "FROM pg_proc p "
        "JOIN pg_namespace s ON s.oid = p.pronamespace "
        "WHERE s.nspname = 'notifyd_private' AND p.proname LIKE 'send_event%' AND p.prosecdef"
    )
    assert signers == [
        "notifyd_private.send_event_texts(text[])",
        "notifyd_private.send_events(jsonb[])",
    ]


async def test_a_trigger_function_announces_its_own_table_only(daemon: Daemon) -> None:
    """Even its owner cannot make one announce another table's rows."""
    await daemon.sql("CREATE TABLE fake (LIKE notifyd.notifications)")
    await daemon.sql(
        "CREATE TRIGGER t AFTER UPDATE ON fake REFERENCING OLD TABLE AS old_rows "
        "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "
        "notifyd.after_update()"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="notifications only"):
        await daemon.sql("UPDATE fake SET read_at = now()")


async def test_a_new_key_signs_once_every_process_has_read_it(daemon: Daemon) -> None:
    # the keys are re-read at every probe: a short interval from the next LISTEN connection on
    daemon.app.listener._probe_interval = 0.2
    pid = daemon.app.listener.backend_pid
    await daemon.sql("SELECT pg_terminate_backend($1)", pid)
    await eventually(
        lambda: daemon.app.listener.up and daemon.app.listener.backend_pid != pid,
        10,
        "the LISTEN connection back",
    )
    client = await daemon.connect("42")
    old_key, new_key = 1, await daemon.sql("SELECT notifyd_private.new_channel_key()")
    heard: list[str] = []
    listener = await asyncpg.connect(daemon.dsn)
    await listener.add_listener("notifyd", lambda _c, _p, _ch, payload: heard.append(payload))
    try:
        await daemon.notify("42", "still the old key")
        await client.expect("notification:new")
        # 30 s later every process has read the new key (each re-reads them every few seconds)
        await daemon.sql(
            "UPDATE notifyd_private.channel_keys SET created_at = created_at "
            "- interval '31 seconds' WHERE id = $1",
            new_key,
        )
        await eventually(
            lambda: new_key in daemon.app.channel._keys, 10, "the probe reads the new key"
        )
        await daemon.notify("42", "the new key")
        assert (await client.next_data("notification:new"))["notification"][
            "title"
        ] == "the new key"
        await eventually(lambda: len(heard) == 2, 5, "both payloads heard")
        assert [orjson.loads(p[64:])["k"] for p in heard] == [old_key, new_key]
        # the old key, deleted, is gone at the next read: its payloads are refused then
        await daemon.sql("DELETE FROM notifyd_private.channel_keys WHERE id = $1", old_key)
        await eventually(
            lambda: old_key not in daemon.app.channel._keys, 10, "the probe drops the old key"
        )
        await listener.execute("SELECT pg_notify('notifyd', $1)", heard[0])
        await eventually(
            lambda: daemon.app.metrics.notify_refused["unknown-key"] == 1, 5, "refused"
        )
        assert [f for f in await client.quiet(0.3) if f["type"] == "notification:new"] == []
    finally:
        await listener.close()


async def test_a_delete_in_the_inserting_transaction_is_announced(daemon: Daemon) -> None:
    """A notification inserted and deleted before commit: its device is told both, and the
    retention flag that silenced deletes is no longer a setting anyone may set."""
    client = await daemon.connect("42")
    pool = await daemon.pool()
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchval("SELECT notifyd.notify('42', 't', 'phantom', '')")
        await conn.execute("SET LOCAL notifyd.pruning = 'on'")
        await conn.execute("DELETE FROM notifyd.notifications WHERE title = 'phantom'")
    new = await client.next_data("notification:new")
    assert (await client.next_data("notification:deleted"))["id"] == new["notification"]["id"]
    # prune() cannot remove the caller's own rows unannounced: it wants a transaction of its own
    with pytest.raises(asyncpg.ActiveSQLTransactionError, match="transaction of its own"):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO notifyd.notifications (user_id, type, created_at) "
                "VALUES ('42', 't', now() - interval '1 year')"
            )
            await conn.fetchval("SELECT notifyd.prune(interval '0', 10)")


async def test_a_revocation_that_did_not_commit_revokes_nobody(daemon: Daemon) -> None:
    client = await daemon.connect("42")
    pool = await daemon.pool()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO notifyd.revocations VALUES ('42', '2100-01-01')")
        await conn.execute("DELETE FROM notifyd.revocations WHERE user_id = '42'")
    await daemon.notify("42", "still here")
    assert (await client.next_data("notification:new"))["notification"]["title"] == "still here"
    assert daemon.app.admission.revoked == {}
    await (await daemon.connect("42")).close()
    # and one that committed, then was deleted: tokens issued before work again
    await daemon.sql("SELECT notifyd.revoke_user('42')")
    assert (await client.closed())[0] == 4003
    await daemon.sql("DELETE FROM notifyd.revocations")
    await eventually(lambda: daemon.app.admission.revoked == {}, 5, "the revocation withdrawn")


async def test_payloads_the_parser_cannot_read_are_counted_or_caught_up(
    daemon: Daemon, hostile: asyncpg.Connection
) -> None:
    with logged_errors() as errors:
        for payload in ("é" * 64 + '{"k":1,"i":5,"e":[]}', "Z" * 64 + "{}"):
            await hostile.execute("SELECT pg_notify('notifyd', $1)", payload)
        await eventually(
            lambda: daemon.app.metrics.notify_refused["malformed"] == 2, 5, "refused as malformed"
        )
    assert errors == []
    # a genuine payload the parser cannot read (a row's data nested past its depth limit):
    # every row it announced is caught up from the table
    one, two = await daemon.connect("1"), await daemon.connect("2")
    deep = '{"a":' + "[" * 1100 + "]" * 1100 + "}"
    await daemon.sql(
        "INSERT INTO notifyd.notifications (user_id, type, title, data) VALUES "
        "('1', 't', 'innocent', '{}'), ('2', 't', 'deep', $1::jsonb)",
        deep,
    )
    assert (await one.next_data("notification:new"))["notification"]["title"] == "innocent"
    # (too deep for this test's JSON parser too: read as text; a browser's JSON.parse copes)
    async with asyncio.timeout(10):
        # (the row's JSON as PostgreSQL printed it: jsonb puts a space after a colon, json not)
        while not re.search(r'"title": ?"deep"', text := str(await two.ws.recv())):
            pass
    assert text.startswith('{"type":"notification:new"')
    assert daemon.app.channel.undecodable == 1


async def test_a_stale_payload_counts_once(daemon: Daemon, hostile: asyncpg.Connection) -> None:
    heard: list[str] = []
    await hostile.add_listener("notifyd", lambda _c, _p, _ch, payload: heard.append(payload))
    await daemon.sql("SELECT notifyd.revoke_user('gone')")
    await eventually(lambda: len(heard) == 1, 5, "the payload heard")
    captured = heard[0]
    pid = daemon.app.listener.backend_pid
    await daemon.sql("SELECT pg_terminate_backend($1)", pid)
    await eventually(
        lambda: daemon.app.listener.up and daemon.app.listener.backend_pid != pid,
        10,
        "the LISTEN connection back",
    )
    for _ in range(50):
        await hostile.execute("SELECT pg_notify('notifyd', $1)", captured)
    await eventually(
        lambda: daemon.app.metrics.notify_refused["replayed"] == 49,
        5,
        "the copies after the first refused",
    )
    assert daemon.app.channel.stale == 1


async def test_a_user_id_longer_than_a_token_may_hold_is_refused(daemon: Daemon) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await daemon.notify("u" * 257)
    await daemon.notify("u" * 256)
