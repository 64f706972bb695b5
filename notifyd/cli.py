"""Entry points: `notifyd dev|serve|migrate|token|check-config|tail`, uvloop, signals (TERM and
INT stop; HUP reloads `serve` and stops `dev`, whose terminal closed) and the systemd
notifications around them. Translates ConfigError into one line and exit code 2. Settings
come from notifyd.config (reading) and notifyd.core.settings (the declarations: `check-config`
prints every declared setting, secrets as ***).

Nothing in notifyd imports this module. It imports the app, the store, migrations, the client
and uvloop inside the commands that need them, so `token` and `check-config` start without them.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from notifyd import __version__, config
from notifyd.core.auth import issue_token
from notifyd.core.errors import ConfigError, MigrationError, StoreError
from notifyd.core.settings import BY_KEY, SECRET_HINT
from notifyd.ops import logs
from notifyd.ops.gcpolicy import FreezeAfterFullCollections

if TYPE_CHECKING:
    from notifyd.app import App
    from notifyd.ops.systemd import SystemdNotifier

log = logging.getLogger("notifyd")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="notifyd", description="Real-time notifications from PostgreSQL to WebSocket clients."
    )
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
            if not settings.jwt_secrets:
                raise ConfigError("NOTIFYD_JWT_SECRET", f"required to sign tokens {SECRET_HINT}")
            if args.ttl <= 0:
                raise ConfigError("--ttl", "must be positive")
            print(issue_token(settings.jwt_secrets[0], args.sub, args.role, args.ttl))
            return 0
        logs.setup(settings.log_level)
        if args.command == "migrate":
            if not settings.dsn:
                raise ConfigError("NOTIFYD_DSN", "required")
            return _migrate(settings.dsn)
        config.require_serving(settings)
        return _serve(settings, reload=lambda: config.load(config_file=args.config))
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
            elif event.kind in ("notification", "updated"):
                n = event.data
                changed = (
                    ("updated, read " if n["read"] else "updated ")
                    if event.kind == "updated"
                    else ""
                )
                print(
                    f"{changed}{n['createdAt']}  {n['stream']} #{n['seq']}  [{n['priority']}] "
                    f"{n['title']}: {n['message']}",
                    flush=True,
                )
            elif event.kind == "unread":
                counts = event.data
                print(f"unread: {counts['count']}, unseen: {counts['unseen']}", flush=True)
            elif event.kind == "marked":
                mark = event.data
                what = f" ({mark['category']})" if mark["category"] else ""
                print(f"marked {mark['state']}: {mark['target']}{what}", flush=True)
            elif event.kind in ("read", "deleted", "error"):
                print(f"{event.kind}: {json.dumps(event.data)}", flush=True)
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


def _migrate(dsn: str) -> int:
    from notifyd.storage.migrate import migrate

    try:
        applied = asyncio.run(migrate(dsn))
    except MigrationError as exc:
        print(f"notifyd: migration failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else "; the schema is up to date")
    )
    return 0


def _serve(
    settings: config.Settings,
    announce: str | None = None,
    dev_key: str | None = None,
    reload: Callable[[], config.Settings] | None = None,
) -> int:
    """Run the daemon until SIGTERM or SIGINT. `reload` reads the configuration again
    (SIGHUP); without it (`notifyd dev`) SIGHUP stops the daemon too (its terminal closed).
    `dev_key`: serve the demo page and its helpers, which need this key (`notifyd dev`)."""
    import uvloop

    from notifyd.app import App
    from notifyd.ops.systemd import SystemdNotifier
    from notifyd.storage.migrate import migrations
    from notifyd.storage.store import Store

    notifier = SystemdNotifier()

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if reload is None:  # `notifyd dev`: a HUP is its terminal closing, whenever it comes
            loop.add_signal_handler(signal.SIGHUP, _stopping(stop, "SIGHUP (the terminal closed?)"))
            loop.add_signal_handler(signal.SIGTERM, _stopping(stop, "SIGTERM"))
        else:  # SIGHUP's default action ends the process: until it can reload, it is ignored
            loop.add_signal_handler(signal.SIGHUP, _ignored("SIGHUP before notifyd was serving"))
        try:
            store = await Store.open(settings.dsn or "")
        except StoreError as exc:
            log.error("%s", exc)
            return 1
        need = migrations()[-1][0]
        try:
            have = await store.schema_version()
        except StoreError as exc:
            log.error("cannot read the schema version: %s", exc)
            await store.close()
            return 1
        if have < need:
            log.error(
                "the database schema is at version %d; this notifyd needs version %d: "
                "run `notifyd migrate` first",
                have,
                need,
            )
            await store.close()
            return 1
        FreezeAfterFullCollections().install()
        app = App(settings, store, dev=dev_key is not None, dev_key=dev_key)
        try:
            await app.start()
        except TimeoutError as exc:  # (a subclass of OSError)
            log.error("%s", exc)
            await app.stop(0)
            return 1
        except OSError as exc:
            log.error(
                "cannot listen on %s:%d: %s%s",
                settings.host,
                settings.port,
                exc,
                _port_hint(exc, settings.port, dev=dev_key is not None),
            )
            await app.stop(0)
            return 1
        if announce is not None:
            print(announce.replace(f":{settings.port}/", f":{app.port}/"), flush=True)
        # Listening, and app.start() returned only once the LISTEN connection was up.
        notifier.ready(f"serving on {settings.host}:{app.port}")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, _reloader(app, notifier, reload))
        watchdog = None
        if notifier.enabled and notifier.watchdog_seconds:
            watchdog = loop.create_task(_watchdog(app, notifier, notifier.watchdog_seconds / 2))
        await stop.wait()
        log.info("shutting down")
        loop.add_signal_handler(signal.SIGHUP, _ignored("SIGHUP while shutting down"))
        notifier.stopping()
        if watchdog is not None:
            watchdog.cancel()
        await app.stop()
        notifier.close()
        return 0

    return uvloop.run(run())


def _ignored(why: str) -> Callable[[], None]:
    return lambda: log.warning("%s: ignored", why)


def _stopping(stop: asyncio.Event, why: str) -> Callable[[], None]:
    def on_signal() -> None:
        log.info("%s: stopping", why)
        stop.set()

    return on_signal


def _reloader(
    app: App, notifier: SystemdNotifier, reload: Callable[[], config.Settings]
) -> Callable[[], None]:
    def on_sighup() -> None:
        notifier.reloading()
        try:
            fresh = reload()
            merged, changed, ignored = config.reloaded(app.settings, fresh)
            config.require_serving(merged)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: invalid setting %s", exc)
        except Exception:  # whatever went wrong, the daemon serves on as it was
            log.exception("reload failed, the running configuration stays")
        else:
            for key in ignored:
                log.warning(
                    "%s changed but only takes effect after a restart",
                    BY_KEY[key].env,
                )
            app.reload(merged, changed)
        finally:  # systemd waits for READY=1 after RELOADING=1, whatever happened
            notifier.ready(f"serving on {app.settings.host}:{app.port}")

    return on_sighup


async def _watchdog(app: App, notifier: SystemdNotifier, every: float) -> None:
    """WATCHDOG=1 at half of WatchdogSec while the event loop runs: a hung loop gets the
    process restarted. STATUS shows what `systemctl status` should."""
    while True:
        status = (
            f"{len(app.connections)} connections; LISTEN "
            f"{'up' if app.listener.up else 'down (reconnecting)'}"
        )
        notifier.watchdog(status)
        await asyncio.sleep(every)


def _port_hint(exc: OSError, port: int, dev: bool) -> str:
    """What to do about a port that is taken (nothing to add for other errors)."""
    if exc.errno != errno.EADDRINUSE:
        return ""
    if dev:
        return (
            f" (port {port} is taken: another `notifyd dev` may still be running, so stop it, "
            "or choose another port with --port)"
        )
    return f" (port {port} is taken: another process listens on it; NOTIFYD_PORT chooses another)"


def _port_taken(host: str, port: int) -> OSError | None:
    """Whether binding `host:port` fails as the server's own bind would (SO_REUSEADDR too, so a
    port left in TIME_WAIT by the last run counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _dev(args: argparse.Namespace) -> int:
    from notifyd.devserver import banner, dev_secret, new_dev_key, start_postgres
    from notifyd.storage.migrate import migrate

    data_dir = Path(args.data_dir).resolve()
    logs.setup(os.environ.get("NOTIFYD_LOG_LEVEL", "INFO").upper())
    host = "127.0.0.1"
    taken = _port_taken(host, args.port)
    if taken is not None:  # before PostgreSQL starts: nothing to undo
        print(
            f"notifyd: cannot listen on {host}:{args.port}: {taken.strerror}"
            + _port_hint(taken, args.port, dev=True),
            file=sys.stderr,
        )
        return 1
    # Until the event loop takes them over, a closed terminal (HUP), a TERM or a Ctrl-C is
    # noted, not fatal: the process must first stop the PostgreSQL it is starting.
    hung_up: list[str] = []
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: hung_up.append(signal.Signals(signum).name))
    print(f"starting the embedded PostgreSQL in {data_dir} ...", flush=True)
    server, dsn, psql = start_postgres(data_dir)
    try:
        secret = dev_secret(data_dir)
        try:
            if not hung_up:
                asyncio.run(migrate(dsn))
        except MigrationError as exc:
            print(f"notifyd: migration failed: {exc}", file=sys.stderr)
            return 1
        if hung_up:
            print(f"notifyd dev: {hung_up[0]} while starting; stopped", file=sys.stderr)
            return 0
        settings = config.validate(
            config.Settings(dsn=dsn, jwt_secret=secret, port=args.port, host=host)
        )
        key = new_dev_key()
        announce = banner(dsn, psql, secret, settings.host, settings.port, key, data_dir)
        return _serve(settings, announce, dev_key=key)
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # the cleanup below runs to its end
        server.cleanup()
