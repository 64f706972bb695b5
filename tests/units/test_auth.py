"""Token verification with a fake clock."""

from __future__ import annotations

import pytest

from notifyd import config
from notifyd.core.auth import Authenticator, issue_token
from notifyd.core.errors import AuthError
from units.fakes import SECRET


def test_authenticator_with_a_fake_clock() -> None:
    now = [1_000_000.0]
    auth = Authenticator(config.load({"NOTIFYD_JWT_SECRET": SECRET}), clock=lambda: now[0])
    token = issue_token(SECRET, "7", ["A", "b", "a"], ttl=60, clock=lambda: now[0])
    identity = auth.verify(token)
    assert identity.user_id == "7" and identity.roles == ("a", "b")
    assert identity.streams == ("user:7", "role:a", "role:b", "all")
    now[0] += 61
    with pytest.raises(AuthError, match="expired"):
        auth.verify(token)
    with pytest.raises(AuthError, match="too long"):
        auth.verify("x" * 9000)
    many = issue_token(SECRET, "7", [f"r{i}" for i in range(100)], clock=lambda: now[0])
    with pytest.raises(AuthError, match="too many roles"):
        auth.verify(many)
    rs_only = Authenticator(
        config.load({"NOTIFYD_JWT_SECRET": SECRET, "NOTIFYD_JWT_ALGORITHMS": "HS256,RS256"})
    )
    with pytest.raises(AuthError, match="not allowed"):
        rs_only.verify(issue_token(SECRET, "1", algorithm="HS384"))
