# Who a connection is and who a notification is for: role names, one normalisation on both
# sides (Python and PostgreSQL, whatever the database's locale), the recipient check of the
# table and its insert trigger (and the migration that brought it), `iat` and revocation, and a
# token refresh that changes the connection's roles.
from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import jwt
import pytest
import pytest_asyncio
from faults_support import eventually
from support import SECRET, Client, Daemon, admin_exec, running_daemon, with_database
from units.fakes import ROLE_CASES
from websockets.exceptions import InvalidStatus

from notifyd.core.errors import MigrationError
from notifyd.core.roles import role_name
from notifyd.storage.migrate import migrate, sql_dir


async def _sql_role(conn: asyncpg.Connection, raw: str) -> str | None:
    """What the database makes of `raw` as a notification's role: the stored role, or None
    when it refuses it (check_violation)."""
    try:
        async with conn.transaction():
            nid = await conn.fetchval("SELECT notifyd.notify_role($1, 't', 'title', 'm')", raw)
            role: str = await conn.fetchval(
                "SELECT role FROM notifyd.notifications WHERE id = $1", nid
            )
            stream = await conn.fetchval(
                "SELECT stream FROM notifyd.notifications WHERE id = $1", nid
            )
            assert stream == f"role:{role}"
            return role
    except asyncpg.CheckViolationError:
        return None


async def _server_has_icu(pg_server: str) -> bool:
    """Whether the server was built with ICU: its catalogue may list ICU collations all the
    same (an embedded build does), so one is made, in a transaction rolled back."""
    conn = await asyncpg.connect(pg_server)
    try:
        async with conn.transaction():
            try:
                await conn.execute(
                    "CREATE COLLATION notifyd_icu_probe (provider = icu, locale = 'tr-TR')"
                )
            except asyncpg.FeatureNotSupportedError:
                return False
            raise _RollBack
    except _RollBack:
        return True
    finally:
        await conn.close()


class _RollBack(Exception):
    """Leaves the probe's transaction without keeping what it made."""


LOCALES = {
    "the server's default": "",
    "LC_CTYPE C": "TEMPLATE template0 LC_CTYPE 'C' LC_COLLATE 'C'",
    "ICU tr-TR": "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR' LOCALE 'C.UTF-8'",
}


@pytest_asyncio.fixture(params=sorted(LOCALES))
async def locale_db(request: pytest.FixtureRequest, pg_server: str) -> AsyncIterator[str]:
    """A database migrated from scratch under each locale (lower() differs between them)."""
    if request.param == "ICU tr-TR" and not await _server_has_icu(pg_server):
        pytest.skip("this PostgreSQL was built without ICU (an embedded one may be)")
    name = f"notifyd_locale_{os.getpid()}_{sorted(LOCALES).index(request.param)}"
    await admin_exec(
        pg_server,
        f"DROP DATABASE IF EXISTS {name}",
        f"CREATE DATABASE {name} {LOCALES[request.param]}",
    )
    dsn = with_database(pg_server, name)
    await migrate(dsn)
    yield dsn
    await admin_exec(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_the_database_names_roles_exactly_as_python_does(locale_db: str) -> None:
    conn = await asyncpg.connect(locale_db)
    try:
        # the locale really differs here, where it may: lower() is not what names roles
        lowered = await conn.fetchval("SELECT lower('TITLE \u00c4RZTE')")
        assert lowered in ("title \u00e4rzte", "t\u0131tle \u00e4rzte", "title \u00c4rzte")
        for raw in ROLE_CASES:
            if "\x00" in raw:  # PostgreSQL text cannot hold it: nothing to compare
                continue
            assert await _sql_role(conn, raw) == role_name(raw), raw
    finally:
        await conn.close()


async def test_a_token_role_reaches_what_notify_role_sent_to_it(daemon: Daemon) -> None:
    token = daemon.token("r1", ["ADMIN", "\u0130T", "Ops Team"])
    client = await daemon.raw(f"?token={token}")
    confirmed = await client.next_data("connection-confirmed")
    assert confirmed["roles"] == ["admin"]  # the others are no role names: dropped
    with pytest.raises(asyncpg.CheckViolationError):
        await daemon.sql("SELECT notifyd.notify_role($1, 't', 'x', 'm')", "\u0130T")
    await daemon.sql("SELECT notifyd.notify_role('Admin', 't', 'to admins', 'm')")
    n = (await client.next_data("notification:new"))["notification"]
    assert (n["stream"], n["title"]) == ("role:admin", "to admins")


# -- the recipient check -------------------------------------------------------------------

NO_RECIPIENT_STREAMS = ["user:42", "role:admin", "@presence", "whatever:garbage"]


@pytest.mark.parametrize("stream", NO_RECIPIENT_STREAMS)
async def test_a_row_without_recipient_is_refused(daemon: Daemon, stream: str) -> None:
    await daemon.notify("42", "counted")
    with pytest.raises(asyncpg.CheckViolationError, match="recipient"):
        await daemon.sql(
            "INSERT INTO notifyd.notifications (stream, type) VALUES ($1, 't')", stream
        )
    # the trigger refused it before it took a seq: no counter moved
    assert (
        await daemon.sql(
            "SELECT last_seq * 1000 + unread FROM notifyd.streams "
            "JOIN notifyd.tallies USING (stream) WHERE stream = 'user:42'"
        )
        == 1001
    )
    assert await daemon.sql("SELECT count(*) FROM notifyd.streams") == 1


async def test_the_table_check_refuses_such_a_row_without_the_trigger(daemon: Daemon) -> None:
    """The CHECK itself is never NULL: a row written with the insert trigger disabled (as a
    data-only restore does) is refused too."""
    pool = await daemon.pool()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "ALTER TABLE notifyd.notifications DISABLE TRIGGER notifications_assign_seq"
        )
        for stream in NO_RECIPIENT_STREAMS:
            with pytest.raises(asyncpg.CheckViolationError, match="notifications_stream_check"):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO notifyd.notifications (stream, seq, dseq, type) "
                        "VALUES ($1, 1, 1, 't')",
                        stream,
                    )
        await conn.execute(
            "INSERT INTO notifyd.notifications (stream, seq, dseq, type) VALUES ('all', 1, 1, 't')"
        )
        await conn.execute(
            "INSERT INTO notifyd.notifications (user_id, stream, seq, dseq, type) "
            "VALUES ('7', 'user:7', 1, 1, 't')"
        )


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        ("user_id, stream", "'42', 'user:43'"),
        ("role, stream", "'admin', 'role:root'"),
        ("user_id, role, stream", "'42', 'admin', 'user:42'"),
        ("user_id, stream", "'42', 'all'"),
    ],
)
async def test_an_explicit_stream_must_be_the_recipients(
    daemon: Daemon, columns: str, values: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await daemon.sql(
            f"INSERT INTO notifyd.notifications ({columns}, type) VALUES ({values}, 't')"
        )


async def test_the_migration_stops_at_rows_without_recipient(
    pg_server: str, tmp_path: Path
) -> None:
    """A database whose table already holds such rows (as version 1's CHECK let through):
    version 5 is refused with a message saying how to find them, and applies once they are
    gone."""
    old = tmp_path / "sql"
    old.mkdir()
    for path in sorted(sql_dir().glob("*.sql")):
        if int(path.name[:4]) < 5:
            shutil.copy(path, old / path.name)
    name = f"notifyd_v4_{os.getpid()}"
    await admin_exec(pg_server, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    dsn = with_database(pg_server, name)
    try:
        await migrate(dsn, old)
        await admin_exec(
            dsn,
            "INSERT INTO notifyd.notifications (stream, type) "
            "SELECT s, 't' FROM unnest(ARRAY['user:42', 'role:admin', '@presence']) s",
            "SELECT notifyd.notify('42', 't', 'fine', 'm')",
        )
        with pytest.raises(MigrationError) as caught:
            await migrate(dsn)
        message = str(caught.value)
        assert "0005_identity.sql" in message and "3 notifications" in message
        assert "DELETE FROM notifyd.notifications WHERE user_id IS NULL" in message
        await admin_exec(
            dsn,
            "DELETE FROM notifyd.notifications "
            "WHERE user_id IS NULL AND role IS NULL AND stream <> 'all'",
        )
        assert (await migrate(dsn))[0] == "0005_identity.sql"  # and the versions after it
        # version 6 on a table with rows: each is where it was delivered
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT bool_and(seq = dseq) FROM notifyd.notifications")
        finally:
            await conn.close()
        with pytest.raises(asyncpg.CheckViolationError):
            await admin_exec(
                dsn, "INSERT INTO notifyd.notifications (stream, type) VALUES ('user:42', 't')"
            )
    finally:
        await admin_exec(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- iat, exp and revocation ---------------------------------------------------------------


async def test_a_token_from_a_fast_clock_does_not_outlive_a_revocation(daemon: Daemon) -> None:
    """A token whose iat is 2 minutes ahead (the issuer's clock) is refused outright; one a
    few seconds ahead is taken as issued when it was verified, so revoking its user right
    after still closes its connection."""
    ahead = daemon.token("v1", iat=int(time.time()) + 120)
    with pytest.raises(InvalidStatus) as refused:
        await daemon.raw(f"?token={ahead}")
    assert refused.value.response.status_code == 401
    near = daemon.token("v1", iat=int(time.time()) + 3)
    client = await daemon.raw(f"?token={near}")
    await client.next_data("connection-confirmed")
    await daemon.sql("SELECT notifyd.revoke_user('v1')")
    code, _ = await client.closed()
    assert code == 4003
    framed = await daemon.connect("v2")  # and a refresh with such a token is refused
    reply = await framed.request(
        "auth", {"token": daemon.token("v2", iat=int(time.time()) + 60)}, "auth:refreshed"
    )
    assert reply["data"] == {"code": "auth-failed", "message": "token issued in the future"}


# -- a refresh that changes the roles ------------------------------------------------------


async def _refresh(client: Client, token: str, ref: str = "auth-2") -> dict[str, object]:
    reply = await client.request("auth", {"token": token}, "auth:refreshed", ref=ref)
    assert reply["type"] == "auth:refreshed", reply
    data: dict[str, object] = reply["data"]
    return data


async def test_a_refresh_applies_the_new_tokens_roles(daemon: Daemon) -> None:
    d = daemon
    admin = await d.connect("a1", ["admin"])  # a presence watcher (NOTIFYD_PRESENCE_ROLES)
    assert d.app.index.subscribers("role:admin") == {_conn(d, "a1")}
    assert (await _refresh(admin, d.token("a1", [])))["roles"] == []
    # no role:admin item, no presence event, no presence query any more
    assert not d.app.index.subscribers("role:admin") and not d.app.index.subscribers("@presence")
    await d.sql("SELECT notifyd.notify_role('admin', 't', 'for admins', 'm')")
    await d.connect("someone")
    query = await admin.request("presence:query", {"userIds": ["someone"]}, "presence:state")
    assert query["data"]["code"] == "forbidden"
    sync = await admin.request(
        "notification:sync-request", {"cursors": {"role:admin": 0}}, "notification:sync-response"
    )
    assert sync["data"]["code"] == "forbidden"
    await d.notify("a1", "mine")
    frames = await admin.quiet(0.5)
    assert [
        f["data"]["notification"]["title"] for f in frames if f["type"] == "notification:new"
    ] == ["mine"]
    assert not [f for f in frames if f["type"].startswith("presence:")]
    # roles gained: live from now on, and the sync-request may name them
    data = await _refresh(admin, d.token("a1", ["Doctor", "admin"]), ref="auth-3")
    assert data["roles"] == ["doctor", "admin"]
    await d.sql("SELECT notifyd.notify_role('doctor', 't', 'for doctors', 'm')")
    n = (await admin.next_data("notification:new"))["notification"]
    assert (n["stream"], n["title"]) == ("role:doctor", "for doctors")
    sync = await admin.sync({"user:a1": 1, "role:admin": 0, "role:doctor": 1})
    assert [n["title"] for n in sync["notifications"]] == ["for admins"]
    await d.connect("other")
    assert (await admin.next_data("presence:online"))["userId"] == "other"


def _conn(d: Daemon, user: str) -> object:
    return next(
        c
        for c in d.app.connections
        if c.session.identity is not None and c.session.identity.user_id == user
    )


async def test_a_dropped_stream_is_forgotten_by_the_publisher(daemon: Daemon) -> None:
    """A stream whose last local subscriber dropped its role leaves the catch-up points; a
    stream first gained by a refresh gets its floor (its last seq), as at connect."""
    d = daemon
    client = await d.connect("f1", ["ops"])
    await d.sql("SELECT notifyd.notify_role('ops', 't', 'live', 'm')")
    await client.next_data("notification:new")
    for _ in range(2):
        await d.sql("SELECT notifyd.notify_role('sre', 't', 'before the refresh', 'm')")
    assert d.app.publisher.catch_up_points() == {"role:ops": 1, "user:f1": 0, "all": 0}
    await _refresh(client, d.token("f1", ["sre"]))
    await eventually(
        lambda: d.app.publisher.catch_up_points().get("role:sre") == 2,
        5,
        "the gained stream's floor is noted",
    )
    assert "role:ops" not in d.app.publisher.catch_up_points()
    await d.sql("SELECT notifyd.notify_role('sre', 't', 'after', 'm')")
    n = (await client.next_data("notification:new"))["notification"]
    assert (n["stream"], n["seq"]) == ("role:sre", 3)


async def test_a_refresh_can_move_the_expiry_earlier(fresh_db: str) -> None:
    async with running_daemon(fresh_db) as d:
        client = await d.connect("x1")
        await _refresh(client, d.token("x1", ttl=1))
        code, reason = await client.closed(timeout=5)
        assert code == 4001 and "expired" in (reason or "")


async def test_refresh_with_an_exp_out_of_range_keeps_the_connection(daemon: Daemon) -> None:
    client = await daemon.connect("o1")
    token = jwt.encode({"sub": "o1", "exp": 1e300}, SECRET, "HS256")
    reply = await client.request("auth", {"token": token}, "auth:refreshed")
    assert reply["data"] == {"code": "auth-failed", "message": "token exp is out of range"}
    assert (await client.request("ping", {"timestamp": 1}, "pong"))["data"] == {"timestamp": 1}
