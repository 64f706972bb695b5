"""The sd_notify protocol (Type=notify services): datagrams of "KEY=VALUE" lines to the
AF_UNIX socket named by $NOTIFY_SOCKET ('@' = the abstract namespace), and the watchdog
interval from $WATCHDOG_USEC. Without $NOTIFY_SOCKET (not under systemd) it does nothing.

Imports nothing of notifyd, and no asyncio: a datagram send does not block.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address if address[:1] in ("/", "\0") else ""
        self._socket: socket.socket | None = None
        self.watchdog_seconds: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send one message ("READY=1", "STATUS=...", ...); False when it could not be sent."""
        if not self._address:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) match this to the reload.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=shutting down")

    def watchdog(self, status: str | None = None) -> bool:
        return self.notify("WATCHDOG=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
