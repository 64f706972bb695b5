# Fixtures: one PostgreSQL server for the session (NOTIFYD_TEST_DSN, else an embedded one the
# suite starts itself), a migrated template database, a fresh database per test cloned from it,
# an in-process daemon on that database, and Redis (NOTIFYD_TEST_REDIS_URL, else a redis-server
# the suite starts). A service that cannot be had fails, never skips.
from __future__ import annotations

import asyncio
import gc
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from redis_support import HOW_TO_PROVIDE_REDIS, RedisServer
from support import HOW_TO_PROVIDE_PG, Daemon, admin_exec, running_daemon, with_database

from notifyd.storage.migrate import migrate

_counter = itertools.count()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Garbage is collected after each test, so that a socket or transport a test leaves
    unclosed is reported (ResourceWarning) against that test, not against whichever later test
    the next collection happens in (the daemon's GC policy makes collections rare)."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server URL whose user may create databases."""
    dsn = os.environ.get("NOTIFYD_TEST_DSN")
    if dsn:
        yield dsn
        return
    try:
        from notifyd.devserver import start_postgres

        tmp = Path(tempfile.mkdtemp(prefix="notifyd-test-pg-"))
        tmp.chmod(0o755)
        server, uri, _psql = start_postgres(tmp)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"cannot start an embedded PostgreSQL ({exc}); {HOW_TO_PROVIDE_PG}")
    yield uri
    server.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)  # 55 MB of PostgreSQL: not left in the temp dir


@pytest_asyncio.fixture(scope="session")
async def template_db(pg_server: str) -> AsyncIterator[str]:
    """A migrated database that per-test databases are cloned from."""
    name = f"notifyd_tmpl_{os.getpid()}"
    try:
        await admin_exec(pg_server, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"cannot use PostgreSQL at NOTIFYD_TEST_DSN ({exc}); {HOW_TO_PROVIDE_PG}")
    await migrate(with_database(pg_server, name))
    yield name
    await admin_exec(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest_asyncio.fixture
async def fresh_db(pg_server: str, template_db: str) -> AsyncIterator[str]:
    """The URL of a new, migrated, empty database for one test."""
    name = f"notifyd_t_{os.getpid()}_{next(_counter)}"
    for attempt in range(20):
        try:
            await admin_exec(pg_server, f"CREATE DATABASE {name} TEMPLATE {template_db}")
            break
        except asyncpg.ObjectInUseError:  # template briefly busy (another clone)
            await asyncio.sleep(0.05 * (attempt + 1))
    yield with_database(pg_server, name)
    await admin_exec(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest_asyncio.fixture
async def daemon(fresh_db: str) -> AsyncIterator[Daemon]:
    async with running_daemon(fresh_db) as d:
        yield d


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server URL shared by the session (tests keep apart by key prefix)."""
    url = os.environ.get("NOTIFYD_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = private_redis_server()
    yield server.url
    server.cleanup()


def private_redis_server() -> RedisServer:
    try:
        server = RedisServer()
        server.start()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"cannot start redis-server ({exc}); {HOW_TO_PROVIDE_REDIS}")
    return server


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may kill and restart."""
    server = private_redis_server()
    yield server
    server.cleanup()


@pytest.fixture
def redis_prefix() -> str:
    return f"notifyd-test-{os.getpid()}-{next(_counter)}:"
