# JWT -> Identity (user, roles, expiry). Pure: the clock is injectable, keys come from Settings.
# Refuses `alg: none`, algorithms outside the allow-list, a missing `exp` or user claim, and
# wrong `aud`/`iss` when configured. Messages never echo the token.
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from notifyd.config import Settings
from notifyd.errors import AuthError

MAX_TOKEN_LENGTH = 8192
MAX_ROLES = 64
BAD_SIGNATURE = "token signature invalid"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    roles: tuple[str, ...]
    expires_at: float  # seconds since the epoch
    issued_at: float | None

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream this identity receives: its own, its roles', and `all`."""
        return (f"user:{self.user_id}", *(f"role:{r}" for r in self.roles), "all")

    @property
    def user_stream(self) -> str:
        return f"user:{self.user_id}"


class Authenticator:
    """Verifies tokens against the configured keys and claims."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._algorithms = list(settings.jwt_algorithms)

    def verify(self, token: str) -> Identity:
        s = self._settings
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("token algorithm not allowed")
        # The key follows the algorithm family, so a public key can never be used as an HMAC
        # secret (the classic RS256 -> HS256 confusion).
        keys = s.jwt_secrets if alg.startswith("HS") else (s.jwt_public_key or "",)
        if not any(keys):
            raise AuthError("token algorithm not allowed")
        for key in keys[:-1]:  # during a rotation: the signature tells which secret it is
            try:
                return self._decode(token, key, alg)
            except AuthError as exc:
                if str(exc) != BAD_SIGNATURE:
                    raise
        return self._decode(token, keys[-1], alg)

    def _decode(self, token: str, key: str, alg: str) -> Identity:
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=0,
                options={
                    "require": ["exp"],
                    "verify_aud": s.jwt_audience is not None,
                    "verify_iss": s.jwt_issuer is not None,
                    "verify_exp": False,  # checked below against the injectable clock
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer not accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError(BAD_SIGNATURE) from None
        except jwt.PyJWTError:
            raise AuthError("token invalid") from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, object]) -> Identity:
        s = self._settings
        now = self._clock()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("token exp is not a number")
        if exp <= now:
            raise AuthError("token expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf > now:
            raise AuthError("token not valid yet")
        user = claims.get(s.jwt_user_claim)
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        if not isinstance(user, str) or not user or len(user) > 256:
            raise AuthError(f"token lacks the {s.jwt_user_claim!r} claim")
        roles: list[str] = []
        raw_roles = claims.get(s.jwt_roles_claim)
        if isinstance(raw_roles, list):
            roles.extend(r for r in raw_roles if isinstance(r, str))
        elif isinstance(raw_roles, str):
            roles.append(raw_roles)
        single = claims.get("role")
        if isinstance(single, str):
            roles.append(single)
        clean = tuple(dict.fromkeys(r.lower() for r in roles if r and len(r) <= 128))
        if len(clean) > MAX_ROLES:
            raise AuthError("token has too many roles")
        iat = claims.get("iat")
        issued = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
        return Identity(user, clean, float(exp), issued)


def issue_token(
    secret: str,
    user_id: str,
    roles: list[str] | tuple[str, ...] = (),
    ttl: float = 3600,
    *,
    algorithm: str = "HS256",
    extra: dict[str, object] | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """An HS* token for development and tests (`notifyd token`)."""
    now = int(clock())
    claims: dict[str, object] = {"sub": user_id, "roles": list(roles), "iat": now,
                                 "exp": now + int(ttl)}
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm=algorithm)
