"""The timing wheel."""

from __future__ import annotations

from notifyd.core.timers import TimerWheel


def test_timer_wheel_returns_items_once_when_due() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=100.0, resolution=0.1)
    wheel.schedule("late", 105.0)
    wheel.schedule("soon", 100.25)
    wheel.schedule("past", 50.0)  # already due: comes back on the next pop
    assert len(wheel) == 3
    assert wheel.pop_due(100.05) == ["past"]
    assert wheel.pop_due(100.2) == []
    assert wheel.pop_due(100.31) == ["soon"]
    assert wheel.pop_due(104.9) == []
    assert wheel.pop_due(110.0) == ["late"]
    assert wheel.pop_due(200.0) == [] and len(wheel) == 0


def test_timer_wheel_pops_at_most_the_limit_and_keeps_the_rest_due() -> None:
    wheel: TimerWheel[int] = TimerWheel(now=0.0, resolution=0.1)
    for i in range(5):
        wheel.schedule(i, 0.05)  # one slot
    for i in range(5, 8):
        wheel.schedule(i, 0.15)  # the next
    wheel.schedule(99, 9.0)
    assert wheel.pop_due(1.0, limit=3) == [0, 1, 2]
    wheel.schedule(50, 0.0)  # due now, scheduled between two pops: it waits its turn
    assert wheel.pop_due(1.0, limit=3) == [3, 4, 50]
    assert wheel.pop_due(1.0, limit=3) == [5, 6, 7]
    assert wheel.pop_due(1.0, limit=3) == []
    assert len(wheel) == 1 and wheel.pop_due(9.1) == [99]
