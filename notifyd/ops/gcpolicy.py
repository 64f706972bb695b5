"""The cycle collector's policy for a long-running server. After each full collection, what
survived it is frozen (gc.freeze), so later collections traverse only what was made since
instead of every open connection again: with 20,000 connections open, one full collection
paused the event loop for up to half a second, and connection churn brings one about every
time the tracked objects grow by a quarter. An object that dies in a reference cycle while
frozen waits for the next thaw: every `thaw_every` seconds everything is unfrozen, and the
next full collection looks at all of it again (a closed connection leaves no cycle: it is
freed by reference counting, frozen or not).

Imports nothing of notifyd, and does no I/O: the clock is passed in.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

THAW_EVERY = 900.0  # seconds


class FreezeAfterFullCollections:
    """Installed by `notifyd serve` for the life of the process."""

    def __init__(
        self, thaw_every: float = THAW_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.thaw_every = thaw_every
        self._clock = clock
        self._thaw_at = clock() + thaw_every
        self.freezes = 0
        self.thaws = 0

    def install(self) -> None:
        gc.callbacks.append(self._collected)

    def uninstall(self) -> None:
        """Stop, and give every frozen object back to the collector."""
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        gc.unfreeze()

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        now = self._clock()
        if now >= self._thaw_at:
            # This collection did not look at the frozen objects; the next full one will.
            gc.unfreeze()
            self._thaw_at = now + self.thaw_every
            self.thaws += 1
        else:
            gc.freeze()  # everything tracked now survived this collection
            self.freezes += 1
