"""The token bucket (the per-connection rate limit) and the closing grace."""

from __future__ import annotations

from notifyd.core.limits import CloseGrace, TokenBucket, Verdict


def test_token_bucket() -> None:
    bucket = TokenBucket(burst=3, now=0.0)
    assert [bucket.take(1.0, 3, 0.0) for _ in range(3)] == [Verdict.ALLOW] * 3
    assert bucket.take(1.0, 3, 0.0) is Verdict.REFUSE
    assert bucket.take(1.0, 3, 1.0) is Verdict.ALLOW  # refilled one token
    assert bucket.take(1.0, 3, 1.0) is Verdict.REFUSE
    assert bucket.take(1.0, 3, 1.0) is Verdict.REFUSE
    assert bucket.take(1.0, 3, 1.0) is Verdict.CLOSE  # refused `burst` times in a row


def test_close_grace() -> None:
    grace = CloseGrace(waiting=1000, now=0.0, grace=2.0, limit=30.0)
    assert not grace.expired(1000, 1.9)  # nothing taken yet, within the grace
    assert grace.expired(1000, 2.0)  # 2 s without progress
    grace = CloseGrace(waiting=1000, now=0.0, grace=2.0, limit=30.0)
    assert not grace.expired(900, 1.5)  # progress at 1.5 s
    assert not grace.expired(900, 3.4)
    assert grace.expired(900, 3.5)
    grace = CloseGrace(waiting=1000, now=0.0, grace=2.0, limit=30.0)
    assert not grace.expired(0, 1.0)  # took everything at 1 s: 2 s to answer from then
    assert not grace.expired(0, 2.9)
    assert grace.expired(0, 3.0)
    grace = CloseGrace(waiting=10**9, now=0.0, grace=2.0, limit=30.0)
    for t in range(1, 30):  # a trickle keeps it alive, but not past the limit
        assert not grace.expired(10**9 - t, float(t))
    assert grace.expired(10**9 - 30, 30.0)
