"""The backoff policy (notifyd.core.backoff)."""

from __future__ import annotations

import pytest

from notifyd.core.backoff import Backoff


def test_delay_doubles_up_to_the_cap_with_half_of_it_random() -> None:
    low = Backoff(0.5, 30.0, rand=lambda: 0.0)
    assert [low.delay(a) for a in (0, 1, 2, 10, 50, 10_000)] == [0.25, 0.5, 1.0, 15.0, 15.0, 15.0]
    high = Backoff(0.5, 30.0, rand=lambda: 1.0)
    assert [high.delay(a) for a in (0, 3, 6)] == [0.5, 4.0, 30.0]
    half = Backoff(0.1, 5.0, rand=lambda: 0.5)
    assert half.delay(1) == pytest.approx(0.15)


def test_next_counts_attempts_and_reset_starts_again() -> None:
    draws = iter([0.0, 1.0, 0.0, 1.0])
    backoff = Backoff(0.1, 0.4, rand=lambda: next(draws))
    assert [backoff.next(), backoff.next(), backoff.next()] == [0.05, 0.2, 0.2]
    assert backoff.attempt == 3
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next() == 0.1


def test_default_jitter_stays_within_bounds() -> None:
    backoff = Backoff(0.1, 2.0)
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= backoff.delay(attempt) <= ceiling


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_bad_bounds_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)
