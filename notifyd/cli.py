# Entry points: `notifyd dev|serve|migrate|token|check-config|tail`, logging set-up, uvloop and
# signals. Translates ConfigError into one line and exit code 2, as the contract requires.
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from notifyd import __version__, config
from notifyd.auth import issue_token
from notifyd.errors import ConfigError, MigrationError, StoreError

log = logging.getLogger("notifyd")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: what journald and log shippers want."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"level": record.levelname.lower(), "logger": record.name,
                "msg": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notifyd", description="Real-time notifications from "
                                "PostgreSQL to WebSocket clients.")
    p.add_argument("--version", action="version", version=f"notifyd {__version__}")
    p.add_argument("--config", metavar="PATH", help="TOML settings file (or NOTIFYD_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="embedded PostgreSQL + migrate + serve, for development")
    dev.add_argument("--data-dir", default=".notifyd-dev", help="default ./.notifyd-dev/")
    dev.add_argument("--port", type=int, default=8765)
    sub.add_parser("serve", help="run the daemon")
    sub.add_parser("migrate", help="apply sql/ migrations to NOTIFYD_DSN")
    tok = sub.add_parser("token", help="print an HS256 JWT signed with the configured secret")
    tok.add_argument("--sub", required=True, help="user id")
    tok.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    tok.add_argument("--ttl", type=int, default=3600, help="seconds until expiry")
    sub.add_parser("check-config", help="validate and print the effective settings")
    tail = sub.add_parser("tail", help="print a user's notifications live (and what was missed)")
    tail.add_argument("--token", required=True, help="the user's JWT")
    tail.add_argument("--url", default="ws://127.0.0.1:8765", help="the daemon's address")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "dev":
            return _dev(args)
        if args.command == "tail":
            return _tail(args.url, args.token, args.json)
        settings = config.load(config_file=args.config)
        if args.command == "check-config":
            config.require_serving(settings)
            print(json.dumps(settings.redacted(), indent=2))
            return 0
        if args.command == "token":
            if not settings.jwt_secret:
                raise ConfigError("NOTIFYD_JWT_SECRET", "required to sign tokens")
            if args.ttl <= 0:
                raise ConfigError("--ttl", "must be positive")
            print(issue_token(settings.jwt_secret, args.sub, args.role, args.ttl))
            return 0
        _setup_logging(settings.log_level)
        if args.command == "migrate":
            if not settings.dsn:
                raise ConfigError("NOTIFYD_DSN", "required")
            return _migrate(settings.dsn)
        config.require_serving(settings)
        return _serve(settings)
    except ConfigError as exc:
        print(f"notifyd: invalid setting {exc}", file=sys.stderr)
        return 2


def _tail(url: str, token: str, as_json: bool) -> int:
    """Print notifications as they come; state changes go to stderr. Ctrl-C ends it."""
    from notifyd.client import NotifydClient

    async def run() -> int:
        client = NotifydClient(url, token)
        async for event in client.events():
            if event.kind == "state":
                print(f"[{event.data['state']}]", file=sys.stderr, flush=True)
                if event.data["state"] in ("revoked", "unauthorized"):
                    return 1
            elif as_json:
                print(json.dumps({"event": event.kind, **event.data}), flush=True)
            elif event.kind == "notification":
                n = event.data
                print(f"{n['createdAt']}  {n['stream']} #{n['seq']}  [{n['priority']}] "
                      f"{n['title']}: {n['message']}", flush=True)
            elif event.kind == "unread":
                print(f"unread: {event.data['count']}", flush=True)
            elif event.kind in ("read", "deleted", "error"):
                print(f"{event.kind}: {json.dumps(event.data)}", flush=True)
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


def _migrate(dsn: str) -> int:
    from notifyd.migrate import migrate

    try:
        applied = asyncio.run(migrate(dsn))
    except MigrationError as exc:
        print(f"notifyd: migration failed: {exc}", file=sys.stderr)
        return 1
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else
                                                     "; the schema is up to date"))
    return 0


def _serve(settings: config.Settings, announce: str | None = None, dev: bool = False) -> int:
    import uvloop

    from notifyd.app import App
    from notifyd.store import Store

    async def run() -> int:
        try:
            store = await Store.open(settings.dsn or "")
        except StoreError as exc:
            log.error("%s", exc)
            return 1
        app = App(settings, store, dev=dev)
        try:
            await app.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
            await store.close()
            return 1
        if announce is not None:
            print(announce.replace(f":{settings.port}/", f":{app.port}/"), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await app.stop()
        return 0

    return uvloop.run(run())


def _dev(args: argparse.Namespace) -> int:
    from notifyd.devserver import banner, dev_secret, start_postgres
    from notifyd.migrate import migrate

    data_dir = Path(args.data_dir).resolve()
    _setup_logging(os.environ.get("NOTIFYD_LOG_LEVEL", "INFO").upper())
    print(f"starting the embedded PostgreSQL in {data_dir} ...", flush=True)
    server, dsn, psql = start_postgres(data_dir)
    secret = dev_secret(data_dir)
    try:
        asyncio.run(migrate(dsn))
    except MigrationError as exc:
        print(f"notifyd: migration failed: {exc}", file=sys.stderr)
        return 1
    settings = config.validate(config.Settings(dsn=dsn, jwt_secret=secret, port=args.port,
                                               host="127.0.0.1"))
    try:
        return _serve(settings, banner(dsn, psql, secret, settings.host, settings.port),
                      dev=True)
    finally:
        server.cleanup()
