"""Retention: notifications older than NOTIFYD_RETENTION_DAYS are deleted, in short batches,
every RETENTION_EVERY seconds (jittered). The queries are store.py's; this module only paces
them, so a large backlog never holds a long lock. Imports no socket."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from notifyd.config import Settings
from notifyd.core.errors import PruneBusy, StoreError
from notifyd.ops.metrics import Metrics
from notifyd.storage.store import Store

log = logging.getLogger(__name__)

RETENTION_EVERY = 600.0  # seconds between retention runs (jittered: many processes share one DB)
PRUNE_BATCH = 250  # rows per prune transaction: short locks (bench/retention.py)
PRUNE_PAUSE = 0.05  # seconds between batches, so the database serves others meanwhile
PRUNE_RETRIES = 5  # a batch that gave way to an app transaction is retried this often per run


class Retention:
    """Prunes old notifications; `settings` is read at each run (a reload applies)."""

    def __init__(self, store: Store, metrics: Metrics, settings: Callable[[], Settings]) -> None:
        self.store = store
        self.metrics = metrics
        self._settings = settings

    @property
    def settings(self) -> Settings:
        return self._settings()

    async def run_forever(self) -> None:
        await asyncio.sleep(random.uniform(1.0, 5.0))  # not every process at once
        while True:
            if self.settings.retention_days > 0:
                try:
                    await self.prune()
                except StoreError as exc:
                    log.warning(
                        "retention run failed (next in about %.0fs): %s", RETENTION_EVERY, exc
                    )
                except Exception:  # pragma: no cover - a bug must not end retention
                    log.exception("retention run failed")
            await asyncio.sleep(RETENTION_EVERY * random.uniform(0.75, 1.25))

    async def prune(self, batch: int = PRUNE_BATCH) -> int:
        """Delete notifications older than NOTIFYD_RETENTION_DAYS, one short transaction per
        `batch` rows, until none is left or another process is at it. Returns the count."""
        days = self.settings.retention_days
        started, total, batches, busy = time.monotonic(), 0, 0, 0
        while days > 0:
            try:
                deleted = await self.store.prune(days, batch)
            except PruneBusy:
                busy += 1
                if busy > PRUNE_RETRIES:
                    log.info(
                        "retention gave way to app transactions %d times; next run later", busy
                    )
                    break
                await asyncio.sleep(busy * 0.5)
                continue
            if deleted is None:
                break  # another process is pruning
            total += deleted
            batches += 1
            self.metrics.pruned += deleted
            if deleted < batch:
                break
            await asyncio.sleep(PRUNE_PAUSE)
        if total:
            log.info(
                "pruned %d notifications older than %g days in %.2fs (%d batches)",
                total,
                days,
                time.monotonic() - started,
                batches,
            )
        return total
