# Authentication at the edge: the four ways to pass a token, what is refused at the handshake
# (401) or in an auth frame (4001), timeouts and expiry, refresh on a live connection, and the
# public-key algorithms. Real tokens, real handshakes.
from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support import SECRET, Daemon, running_daemon
from units.fakes import token_claims
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from notifyd.core.codes import CloseCode

BAD_TOKENS = {
    "expired": jwt.encode(token_claims(exp=int(time.time()) - 10), SECRET, "HS256"),
    "wrong signature": jwt.encode(token_claims(), "another-secret-" + "y" * 32, "HS256"),
    "alg none": jwt.encode(token_claims(), "", "none"),  # "" is the none algorithm's empty key
    "not allowed alg": jwt.encode(token_claims(), SECRET, "HS512"),
    "no exp": jwt.encode(token_claims(exp=None), SECRET, "HS256"),
    "no user claim": jwt.encode(token_claims(sub=None), SECRET, "HS256"),
    "garbage": "not.a.jwt",
    "not yet valid": jwt.encode(token_claims(nbf=int(time.time()) + 600), SECRET, "HS256"),
}


async def handshake_status(url: str, **kwargs: object) -> int:
    try:
        ws = await connect(url, **kwargs)  # type: ignore[arg-type]
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
async def test_bad_tokens_are_refused_at_the_handshake_with_401(daemon: Daemon, name: str) -> None:
    assert await handshake_status(f"{daemon.url}?token={BAD_TOKENS[name]}") == 401
    assert (
        await handshake_status(
            daemon.url, additional_headers={"Authorization": f"Bearer {BAD_TOKENS[name]}"}
        )
        == 401
    )


@pytest.mark.parametrize("name", ["expired", "alg none", "wrong signature"])
async def test_bad_token_in_auth_frame_closes_with_4001(daemon: Daemon, name: str) -> None:
    client = await daemon.raw()
    await client.send("auth", {"token": BAD_TOKENS[name]})
    code, reason = await client.closed()
    assert code == CloseCode.UNAUTHORIZED and reason


async def test_token_in_header_and_auth_frame(daemon: Daemon) -> None:
    client = await daemon.raw(headers={"Authorization": f"Bearer {daemon.token('h1', ['Ops'])}"})
    confirmed = await client.next_data("connection-confirmed")
    assert confirmed["userId"] == "h1" and confirmed["roles"] == ["ops"]
    assert confirmed["protocolVersion"] == 2
    framed = await daemon.raw()
    await framed.send("auth", {"token": daemon.token("h2")}, ref="a1")
    assert (await framed.next_data("connection-confirmed"))["userId"] == "h2"


async def test_roles_from_a_string_role_claim_and_numeric_user(daemon: Daemon) -> None:
    token = jwt.encode(token_claims(sub=None, userId=77, role="Doctor"), SECRET, "HS256")
    async with running_daemon(daemon.dsn, jwt_user_claim="userId") as other:
        client = await other.raw(f"?token={token}")
        confirmed = await client.next_data("connection-confirmed")
        assert confirmed["userId"] == "77" and confirmed["roles"] == ["doctor"]


async def test_auth_frame_timeout_closes_with_4001(fresh_db: str) -> None:
    async with running_daemon(fresh_db, auth_timeout=0.3) as d:
        client = await d.raw()
        code, reason = await client.closed(timeout=5)
        assert code == CloseCode.UNAUTHORIZED and "timeout" in (reason or "")


async def test_expired_token_closes_live_connection_unless_refreshed(fresh_db: str) -> None:
    async with running_daemon(fresh_db) as d:
        short = await d.raw(f"?token={d.token('e1', ttl=1)}")
        refreshed = await d.raw(f"?token={d.token('e2', ttl=1)}")
        await refreshed.next_data("connection-confirmed")
        reply = await refreshed.request("auth", {"token": d.token("e2", ttl=600)}, "auth:refreshed")
        assert reply["type"] == "auth:refreshed"
        code, reason = await short.closed(timeout=5)
        assert code == CloseCode.UNAUTHORIZED and "expired" in (reason or "")
        assert (await refreshed.request("ping", {}, "pong"))["type"] == "pong"


async def test_refresh_with_another_users_token_is_refused(daemon: Daemon) -> None:
    client = await daemon.connect("m1")
    reply = await client.request("auth", {"token": daemon.token("m2")}, "auth:refreshed")
    assert reply["type"] == "error" and reply["data"]["code"] == "auth-user-mismatch"
    reply = await client.request("auth", {"token": BAD_TOKENS["expired"]}, "auth:refreshed")
    assert reply["data"]["code"] == "auth-failed"
    await daemon.notify("m1", "still mine")
    assert (await client.next_data("notification:new"))["notification"]["title"] == "still mine"


async def test_audience_and_issuer_are_enforced(fresh_db: str) -> None:
    async with running_daemon(fresh_db, jwt_audience="app", jwt_issuer="https://id") as d:
        good = jwt.encode(token_claims(aud="app", iss="https://id"), SECRET, "HS256")
        assert await handshake_status(f"{d.url}?token={good}") == 101
        for claims in (
            token_claims(aud="other", iss="https://id"),
            token_claims(iss="https://id"),
            token_claims(aud="app", iss="https://evil"),
            token_claims(aud="app"),
        ):
            token = jwt.encode(claims, SECRET, "HS256")
            assert await handshake_status(f"{d.url}?token={token}") == 401


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_public_key_algorithms(fresh_db: str, tmp_path: Path, kind: str) -> None:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem)
    async with running_daemon(
        fresh_db, jwt_algorithms=(kind, "HS256"), jwt_public_key_file=key_file
    ) as d:
        token = jwt.encode(token_claims(sub="pk"), private, kind)
        client = await d.raw(f"?token={token}")
        assert (await client.next_data("connection-confirmed"))["userId"] == "pk"
        # the public key must never verify an HMAC token (algorithm confusion)
        forged = jwt.encode(token_claims(), "x" * 64, "HS256")
        assert await handshake_status(f"{d.url}?token={forged}") == 401


async def test_cookie_token_needs_an_allowed_origin(fresh_db: str) -> None:
    async with running_daemon(fresh_db, jwt_cookie="session") as no_origins:
        # without an Origin allow-list the cookie is ignored: no token, so an auth frame is due
        client = await no_origins.raw(headers={"Cookie": f"session={no_origins.token('k1')}"})
        reply = await client.request("ping", {}, "pong")
        assert reply["data"]["code"] == "not-authenticated"
    async with running_daemon(
        fresh_db, jwt_cookie="session", allowed_origins=("https://app.example",)
    ) as d:
        cookie = {"Cookie": f"theme=dark; session={d.token('k2')}"}
        client = await d.raw(headers=cookie, origin="https://app.example")
        assert (await client.next_data("connection-confirmed"))["userId"] == "k2"
        # a page on another site: 403 before anything else
        assert (
            await handshake_status(d.url, additional_headers=cookie, origin="https://evil.example")
            == 403
        )
        # a cookie without any Origin is not a browser page we allowed
        assert await handshake_status(d.url, additional_headers=cookie) == 403
        # native clients without Origin still authenticate with a token
        assert await handshake_status(f"{d.url}?token={d.token('k3')}") == 101


async def test_one_token_rule_at_the_handshake(daemon: Daemon) -> None:
    """The Authorization header before ?token= (as on the HTTP API); either given twice: 400."""
    header = {"Authorization": f"Bearer {daemon.token('p1')}"}
    client = await daemon.raw(f"?token={daemon.token('p2')}", headers=header)
    assert (await client.next_data("connection-confirmed"))["userId"] == "p1"
    bad = {"Authorization": f"Bearer {BAD_TOKENS['expired']}"}
    assert (
        await handshake_status(f"{daemon.url}?token={daemon.token('p3')}", additional_headers=bad)
        == 401
    )
    twice = [("Authorization", header["Authorization"]), ("Authorization", header["Authorization"])]
    assert await handshake_status(daemon.url, additional_headers=twice) == 400
    good = daemon.token("p4")
    assert await handshake_status(f"{daemon.url}?token={good}&token={good}") == 400


def test_notifyd_token_signs_with_the_first_secret(tmp_path: Path) -> None:
    from support import run_cli, subprocess_env

    new = "new-secret-" + "n" * 32
    secret_file = tmp_path / "jwt_secret"
    secret_file.write_text(f"{new}\n{SECRET}\n")
    result = run_cli(
        "token", "--sub", "7", env=subprocess_env(NOTIFYD_JWT_SECRET_FILE=str(secret_file))
    )
    assert result.returncode == 0, result.stderr
    assert jwt.decode(result.stdout.strip(), new, ["HS256"])["sub"] == "7"
