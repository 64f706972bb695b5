"""What happens at its time: snoozed items wake, scheduled items (deliver_at) are delivered and
expired items (expires_at) leave every feed. Every TICK seconds one process (an advisory lock)
runs them, in short batches (notifyd.expire, notifyd.deliver, notifyd.wake); each is then a
change like any other, announced and replayed once. The queries are store.py's; this module
only paces them. Imports no socket."""

from __future__ import annotations

import asyncio
import logging

from notifyd.core.errors import PruneBusy, StoreError
from notifyd.storage.store import Due, Store

log = logging.getLogger(__name__)

TICK = 0.5  # seconds between runs: a scheduled, expired or snoozed item is at most this late
BATCH = 500  # items of each kind per transaction


class Scheduler:
    """Runs what is due, in one process of the cluster at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.done = Due()  # what this process has run, in all

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_due()
            except (StoreError, PruneBusy) as exc:
                log.warning("running what is due failed (retrying): %s", exc)
            except Exception:  # pragma: no cover - a bug must not end the scheduler
                log.exception("running what is due failed")
            await asyncio.sleep(TICK)

    async def run_due(self) -> Due:
        """Run what is due, batch by batch, unless another process is at it: what was run."""
        total = Due()
        while True:
            due = await self.store.run_due(BATCH)
            if due is None:
                return total  # another process holds the lock
            total += due
            if max(due.expired, due.delivered, due.woken) < BATCH:
                break
        self.done += total
        return total
