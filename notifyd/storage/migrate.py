"""Applies sql/NNNN_*.sql in order, each once, recorded in notifyd.schema_migrations. Everything
runs in one transaction under an advisory lock, so two `notifyd migrate` at once are safe:
the second waits, then finds nothing left to do.

Of notifyd, imports only notifyd.core (its errors): never the edge, the app or Redis.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from notifyd.core.errors import MigrationError

_LOCK_KEY = 0x6E6F74696679  # "notify": one advisory lock key for all notifyd migrations
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def sql_dir() -> Path:
    """sql/ inside an installed wheel (notifyd/_sql), else the source tree's sql/."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_sql", package.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("cannot find the sql/ migrations directory")


def migrations(directory: Path | None = None) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration file, in version order."""
    found = []
    for path in sorted((directory or sql_dir()).iterdir()):
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path.name, path.read_text()))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply what is missing; returns the names of the files applied now."""
    pending = migrations(directory)
    try:
        conn = await asyncpg.connect(dsn, timeout=30)
    except (OSError, asyncpg.PostgresError) as exc:
        raise MigrationError(f"cannot connect to PostgreSQL: {exc}") from exc
    applied: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS notifyd;"
                "CREATE TABLE IF NOT EXISTS notifyd.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"]
                for r in await conn.fetch("SELECT version FROM notifyd.schema_migrations")
            }
            for version, name, sql in pending:
                if version in done:
                    continue
                try:
                    await conn.execute(sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{name}: {exc}") from exc
                await conn.execute(
                    "INSERT INTO notifyd.schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
                applied.append(name)
    finally:
        await conn.close()
    return applied
