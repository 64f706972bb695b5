"""Token verification: claims, secrets, keys, role names and time, with a fake clock."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.datastructures import Headers

from notifyd.core.auth import IAT_LEEWAY, MAX_EXP, Authenticator, issue_token, token_from
from notifyd.core.errors import AuthError, ClientError, ConfigError
from notifyd.core.protocol import PresenceQuery, decode_client_frame
from notifyd.core.roles import role_name
from notifyd.core.settings import Settings, check, parse, with_key_files
from units.fakes import ROLE_CASES, SECRET, token_claims


def test_authenticator_with_a_fake_clock() -> None:
    now = [1_000_000.0]
    auth = Authenticator(parse({"jwt_secret": SECRET}), clock=lambda: now[0])
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
    rs_only = Authenticator(parse({"jwt_secret": SECRET, "jwt_algorithms": "HS256,RS256"}))
    with pytest.raises(AuthError, match="not allowed"):
        rs_only.verify(issue_token(SECRET, "1", algorithm="HS384"))


def test_several_secrets_during_a_rotation() -> None:
    """A secret file with one secret per line: tokens signed with any are accepted (the
    signature picks it), other checks still apply, and a secret too short is refused."""
    new, old = "new-secret-" + "n" * 32, SECRET
    named = check(Settings(jwt_secret_file=Path("/run/credentials/jwt_secret")))
    settings = with_key_files(named, secret_file_text=f"{new}\n{old}\n", public_key_text=None)
    assert settings.jwt_secrets == (new, old)
    auth = Authenticator(settings)
    assert auth.verify(jwt.encode(token_claims(sub="a"), new, "HS256")).user_id == "a"
    assert auth.verify(jwt.encode(token_claims(sub="b"), old, "HS256")).user_id == "b"
    with pytest.raises(AuthError, match="token signature invalid"):
        auth.verify(jwt.encode(token_claims(), "another-secret-" + "y" * 32, "HS256"))
    with pytest.raises(AuthError, match="token expired"):  # found with the second secret
        auth.verify(jwt.encode(token_claims(exp=int(time.time()) - 10), old, "HS256"))
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        with_key_files(named, secret_file_text=f"{new}\nshort\n", public_key_text=None)


def test_claims_are_checked_with_pyjwts_meaning_of_aud_and_iss() -> None:
    """Each refusal gives its own reason; an `aud` list is accepted when it names ours, and a
    payload that is not a JSON object is refused like any other invalid token."""
    auth = Authenticator(
        check(Settings(jwt_secret=SECRET, jwt_audience="app", jwt_issuer="https://id"))
    )

    def token(**kw: object) -> str:
        return jwt.encode(token_claims(**kw), SECRET, "HS256")

    assert auth.verify(token(aud=["other", "app"], iss="https://id")).user_id == "42"
    refused = {
        "token lacks the 'aud' claim": token(iss="https://id"),
        "token audience not accepted": token(aud=["other"], iss="https://id"),
        "token lacks the 'iss' claim": token(aud="app"),
        "token issuer not accepted": token(aud="app", iss="https://evil"),
        "token invalid": jwt.PyJWS().encode(b"[1, 2]", SECRET, "HS256"),
        "token lacks the 'exp' claim": token(aud="app", iss="https://id", exp=None),
        "token algorithm not allowed": jwt.encode(
            token_claims(aud="app", iss="https://id"), SECRET, "HS384"
        ),
        "malformed token": "a.b",
        "token 'sub' claim is not a string": token(aud="app", iss="https://id", sub=42),
        "token 'jti' claim is not a string": token(aud="app", iss="https://id", jti=7),
    }
    for reason, bad in refused.items():
        with pytest.raises(AuthError) as caught:
            auth.verify(bad)
        assert str(caught.value) == reason
    with pytest.raises(AuthError, match="token audience not accepted"):  # not all strings
        auth.verify(token(aud=["app", 7], iss="https://id"))


def test_a_public_key_of_another_family_verifies_nothing_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RS256 and ES256 allowed with an RSA key: RS256 tokens verify, ES256 ones are refused
    as not allowed (no key of theirs, which is logged), and the key mix is no start-up error."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    named = check(Settings(jwt_algorithms=("RS256", "ES256"), jwt_public_key_file=Path("k.pem")))
    auth = Authenticator(with_key_files(named, secret_file_text=None, public_key_text=pem.decode()))
    assert [r.getMessage()[:14] for r in caplog.records] == ["no key for ES2"]
    assert auth.verify(jwt.encode(token_claims(sub="r"), rsa_key, "RS256")).user_id == "r"
    ec_token = jwt.encode(token_claims(), ec.generate_private_key(ec.SECP256R1()), "ES256")
    with pytest.raises(AuthError, match="token algorithm not allowed"):
        auth.verify(ec_token)


def _auth() -> Authenticator:
    return Authenticator(check(Settings(jwt_secret=SECRET)), clock=lambda: 1_800_000_000.0)


def _token(**claims: object) -> str:
    base: dict[str, object] = {"sub": "42", "exp": 1_800_000_600, "iat": 1_800_000_000}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, "HS256")


def _json(frame: object) -> str:
    return orjson.dumps(frame).decode()


def test_token_roles_are_named_as_the_database_names_them() -> None:
    """Each case as one token role: kept under its role name, or dropped (the token stays
    good); a presence:query asks about the same name, or refuses a string that is none."""
    auth = _auth()
    for raw in ROLE_CASES:
        named = role_name(raw)
        assert auth.verify(_token(roles=[raw])).roles == ((named,) if named else ()), raw
        frame = {"type": "presence:query", "data": {"roles": [raw]}}
        if named is None:
            with pytest.raises(ClientError) as caught:
                decode_client_frame(_json(frame))
            assert caught.value.code == "invalid-data"
        else:
            event = decode_client_frame(_json(frame)).event
            assert event == PresenceQuery((), (named,))
    # the claim's roles and the single `role` claim, deduplicated by name
    identity = auth.verify(_token(roles=["Doctor", "DOCTOR", "\u0130T"], role="doctor"))
    assert identity.roles == ("doctor",)


def test_an_iat_in_the_future_is_refused_and_a_near_one_counts_as_now() -> None:
    auth = _auth()
    now = 1_800_000_000.0
    with pytest.raises(AuthError, match="token issued in the future"):
        auth.verify(_token(iat=now + 120))
    near = auth.verify(_token(iat=now + IAT_LEEWAY))
    assert near.issued_at == now  # no later than its verification
    assert near.revoked_by(now) and not near.revoked_by(now - 1)
    assert auth.verify(_token(iat=now - 30)).issued_at == now - 30
    assert auth.verify(_token(iat=None)).revoked_by(0.0)  # no iat: any revocation covers it


def test_an_exp_past_the_year_9999_is_refused() -> None:
    auth = _auth()
    assert auth.verify(_token(exp=MAX_EXP)).expires_at == MAX_EXP
    for exp in (MAX_EXP + 1, 1e300, 2**70):
        with pytest.raises(AuthError, match="token exp is out of range"):
            auth.verify(_token(exp=exp))


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
    # a second `token` parameter is refused even when a header carries the token
    with pytest.raises(ClientError, match="more than one 'token' query parameter"):
        token_from(Headers([("Authorization", "Bearer a")]), {"token": ["b", "c"]})
