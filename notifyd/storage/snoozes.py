"""Snoozed items wake at their time: every WAKE_EVERY seconds one process (an advisory lock)
calls notifyd.wake(), in short batches, and each woken item is then a change like any other
(its new state is announced and replayed). The queries are store.py's; this module only paces
them. Imports no socket."""

from __future__ import annotations

import asyncio
import logging

from notifyd.core.errors import PruneBusy, StoreError
from notifyd.storage.store import Store

log = logging.getLogger(__name__)

WAKE_EVERY = 1.0  # seconds between runs: a snoozed item comes back at most this late
WAKE_BATCH = 500  # items per transaction


class Snoozes:
    """Wakes snoozed items whose time has come."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.woken = 0

    async def run_forever(self) -> None:
        while True:
            try:
                await self.wake()
            except (StoreError, PruneBusy) as exc:
                log.warning("waking snoozed items failed (retrying): %s", exc)
            except Exception:  # pragma: no cover - a bug must not end the waking
                log.exception("waking snoozed items failed")
            await asyncio.sleep(WAKE_EVERY)

    async def wake(self) -> int:
        """Wake what is due, batch by batch, unless another process is at it. The count."""
        total = 0
        while True:
            woken = await self.store.wake(WAKE_BATCH)
            if woken is None:
                return total  # another process holds the lock
            total += woken
            if woken < WAKE_BATCH:
                break
        self.woken += total
        return total
