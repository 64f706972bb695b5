"""Token verification with a fake clock; which token a request carries (token_from)."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers

from notifyd import config
from notifyd.core.auth import Authenticator, issue_token, token_from
from notifyd.core.errors import AuthError, ClientError
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


def test_token_from_one_rule_header_then_query_then_cookie() -> None:
    bearer = ("Authorization", "Bearer from-header")
    cookie = ("Cookie", "theme=dark; session=from-cookie")
    query = {"token": ["from-query"]}
    assert token_from(Headers([bearer, cookie]), query, "session") == ("from-header", False)
    assert token_from(Headers([cookie]), query, "session") == ("from-query", False)
    assert token_from(Headers([cookie]), {}, "session") == ("from-cookie", True)
    assert token_from(Headers([cookie]), {}) == (None, False)  # no cookie unless named
    assert token_from(Headers([cookie]), {}, "other") == (None, False)
    # not a bearer token, or an empty one: the next way counts
    assert token_from(Headers([("Authorization", "Basic eA==")]), query) == ("from-query", False)
    assert token_from(Headers([("Authorization", "bearer  ")]), query) == ("from-query", False)
    assert token_from(Headers([("Authorization", "BEARER t ")]), {}) == ("t", False)
    assert token_from(Headers([("Cookie", 'session="x')]), {}, "session") == (None, False)
    assert token_from(Headers(), {"token": [""]}) == (None, False)


def test_token_from_refuses_what_is_given_twice() -> None:
    twice = Headers([("Authorization", "Bearer a"), ("authorization", "Bearer b")])
    with pytest.raises(ClientError, match="more than one Authorization header") as refused:
        token_from(twice, {})
    assert refused.value.code == "invalid-data"
    with pytest.raises(ClientError, match="more than one 'token' query parameter"):
        token_from(Headers(), {"token": ["a", "b"]})
