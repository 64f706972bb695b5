"""JWT -> Identity (user, roles, expiry). Pure: the clock is injectable, keys come from Settings.
Refuses `alg: none`, algorithms outside the allow-list, a missing `exp` or user claim, an `exp`
past the year 9999, an `iat` in the future, and wrong `aud`/`iss` when configured. Messages
never echo the token. Role names are normalised by notifyd.core.roles, as the database does.

Imports no asyncio, asyncpg, redis or socket, and of notifyd only notifyd.core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol, TypeGuard

import jwt
import orjson
from jwt.algorithms import Algorithm, get_default_algorithms

from notifyd.core.codes import AuthReason, ErrorCode
from notifyd.core.errors import AuthError, ClientError
from notifyd.core.protocol import TOKEN_PARAMETER, streams_of, user_stream
from notifyd.core.roles import role_name
from notifyd.core.settings import Settings

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
MAX_ROLES = 64
# The latest `exp` that is a time at all (9999-12-31T23:59:59Z): a later one cannot be told to
# the client (auth:refreshed) nor be a deadline.
MAX_EXP = 253_402_300_799
# Seconds an `iat` may be ahead of this clock (the issuer's clock running a little fast). A later
# one is refused: its token would outlive a revocation (notifyd.revoke_user refuses the tokens
# issued at or before it, by their `iat`).
IAT_LEEWAY = 5.0


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    roles: tuple[str, ...]
    expires_at: float  # seconds since the epoch
    # the token's `iat`, but never later than its first verification (so a revocation after
    # that moment covers it); None when the token had none
    issued_at: float | None

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream this identity receives: its own, its roles', and `all`."""
        return streams_of(self.user_id, self.roles)

    @property
    def user_stream(self) -> str:
        return user_stream(self.user_id)

    def revoked_by(self, revoked_at: float) -> bool:
        """Whether a revocation of this user at `revoked_at` covers this token: it was issued
        at or before that moment, or cannot show when it was issued."""
        return self.issued_at is None or self.issued_at <= revoked_at


class _PreparedKeys(Algorithm):
    """One of PyJWT's algorithms with the configured keys prepared once. PyJWT prepares and
    checks the key on every verification (a JSON parse and PEM, SSH and DER pattern checks of
    an HMAC secret): a sixth of a handshake's CPU. A signature that verifies with any of the
    keys (two during a secret rotation) is good."""

    def __init__(self, inner: Algorithm, keys: tuple[str, ...]) -> None:
        self._inner = inner
        self._keys = [inner.prepare_key(key) for key in keys]

    def prepare_key(self, key: Any) -> None:
        return None  # the keys are bound: the one PyJWS passes is not used

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        return any(self._inner.verify(msg, prepared, sig) for prepared in self._keys)

    def sign(self, msg: bytes, key: Any) -> bytes:
        raise NotImplementedError("verification only")

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError("verification only")

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError("verification only")


class Authenticator:
    """Verifies tokens against the configured keys and claims. PyJWT parses the token and
    checks its signature; the claims are checked here, with PyJWT's semantics for aud and iss."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._algorithms = list(settings.jwt_algorithms)
        self._jws = jwt.PyJWS(algorithms=[])
        defaults = get_default_algorithms()
        for alg in self._algorithms:
            # The key follows the algorithm family, so a public key can never be used as an
            # HMAC secret (the classic RS256 -> HS256 confusion). An allowed algorithm without
            # a key stays unregistered: its tokens are refused as not allowed.
            keys = (
                settings.jwt_secrets
                if alg.startswith("HS")
                else ((settings.jwt_public_key,) if settings.jwt_public_key else ())
            )
            if alg not in defaults or not any(keys):
                continue
            try:
                prepared = _PreparedKeys(defaults[alg], keys)
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                # e.g. an RSA key beside ES256: that algorithm's tokens are refused as not
                # allowed; an operator who meant both must hear of it
                log.warning("no key for %s: %s; its tokens are refused", alg, exc)
                continue
            self._jws.register_algorithm(alg, prepared)

    def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(AuthReason.TOO_LONG)
        try:
            payload = self._jws.decode_complete(token, algorithms=self._algorithms)["payload"]
        except jwt.InvalidAlgorithmError:
            raise AuthError(AuthReason.ALGORITHM) from None
        except jwt.InvalidSignatureError:
            raise AuthError(AuthReason.SIGNATURE) from None
        except jwt.PyJWTError:
            raise AuthError(AuthReason.MALFORMED) from None
        try:
            claims = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise AuthError(AuthReason.NOT_CLAIMS) from None
        if not isinstance(claims, dict):
            raise AuthError(AuthReason.NOT_CLAIMS)
        for name in ("sub", "jti"):  # registered claims that are strings where present
            if name in claims and not isinstance(claims[name], str):
                raise AuthError(AuthReason.CLAIM_TYPE, f"token {name!r} claim is not a string")
        self._check_audience_and_issuer(claims)
        return self._identity(claims)

    def _check_audience_and_issuer(self, claims: dict[str, object]) -> None:
        s = self._settings
        if s.jwt_audience is not None:
            audiences = claims.get("aud")
            if not audiences:
                raise AuthError(AuthReason.NO_AUDIENCE)
            if isinstance(audiences, str):
                audiences = [audiences]
            if (
                not isinstance(audiences, list)
                or s.jwt_audience not in audiences
                or not all(isinstance(a, str) for a in audiences)
            ):
                raise AuthError(AuthReason.AUDIENCE)
        if s.jwt_issuer is not None:
            if "iss" not in claims:
                raise AuthError(AuthReason.NO_ISSUER)
            if claims["iss"] != s.jwt_issuer:
                raise AuthError(AuthReason.ISSUER)

    def _identity(self, claims: dict[str, object]) -> Identity:
        s = self._settings
        now = self._clock()
        exp = claims.get("exp")
        if exp is None:
            raise AuthError(AuthReason.NO_EXPIRY)
        if not _is_number(exp):
            raise AuthError(AuthReason.EXPIRY_TYPE)
        if exp <= now:
            raise AuthError(AuthReason.EXPIRED)
        if exp > MAX_EXP:
            raise AuthError(AuthReason.EXPIRY_RANGE)
        nbf = claims.get("nbf")
        if _is_number(nbf) and nbf > now:
            raise AuthError(AuthReason.NOT_YET_VALID)
        iat = claims.get("iat")
        issued = None
        if _is_number(iat):
            if iat > now + IAT_LEEWAY:
                raise AuthError(AuthReason.ISSUED_IN_FUTURE)
            issued = min(float(iat), now)
        user = claims.get(s.jwt_user_claim)
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        if not isinstance(user, str) or not user or len(user) > 256:
            raise AuthError(AuthReason.NO_USER, f"token lacks the {s.jwt_user_claim!r} claim")
        roles: list[str] = []
        raw_roles = claims.get(s.jwt_roles_claim)
        if isinstance(raw_roles, list):
            roles.extend(r for r in raw_roles if isinstance(r, str))
        elif isinstance(raw_roles, str):
            roles.append(raw_roles)
        single = claims.get("role")
        if isinstance(single, str):
            roles.append(single)
        # A role that is no role name (notifyd.core.roles) is dropped: no notification can be
        # addressed to it (the database refuses it too).
        named = (role_name(r) for r in roles)
        clean = tuple(dict.fromkeys(r for r in named if r is not None))
        if len(clean) > MAX_ROLES:
            raise AuthError(AuthReason.TOO_MANY_ROLES)
        return Identity(user, clean, float(exp), issued)


class HeaderLookup(Protocol):
    """Request headers, as websockets' Headers has them: every value of a header."""

    def get_all(self, key: str) -> list[str]: ...


def single_header(headers: HeaderLookup, name: str) -> str | None:
    """A header that may be given once; given more than once, it is refused (`invalid-data`):
    which one a proxy or a browser would have honoured is anyone's guess."""
    values = headers.get_all(name)
    if len(values) > 1:
        raise ClientError(ErrorCode.INVALID_DATA, f"more than one {name} header")
    return values[0] if values else None


def token_from(
    headers: HeaderLookup, query: Mapping[str, list[str]], cookie: str | None = None
) -> tuple[str | None, bool]:
    """The token of a request (WebSocket handshake or HTTP API), and whether it came from the
    cookie. One rule for both: the `Authorization: Bearer` header first, then the `token`
    query parameter, then the cookie named `cookie` (the handshake passes its name only when
    the server has an Origin allow-list; the HTTP API reads no cookie). An Authorization
    header or a `token` parameter given more than once is refused (`invalid-data`): which one
    a proxy or a browser would have honoured is anyone's guess."""
    authorization = single_header(headers, "Authorization")
    given = query.get(TOKEN_PARAMETER) or []
    if len(given) > 1:  # refused whatever else the request carries
        raise ClientError(
            ErrorCode.INVALID_DATA, f"more than one {TOKEN_PARAMETER!r} query parameter"
        )
    if authorization and authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
        if token:
            return token, False
    if given and given[0]:
        return given[0], False
    if cookie:
        jar: SimpleCookie = SimpleCookie()
        try:
            for raw in headers.get_all("Cookie"):
                jar.load(raw)
        except CookieError:
            return None, False
        morsel = jar.get(cookie)
        if morsel is not None and morsel.value:
            return morsel.value, True
    return None, False


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    claims: dict[str, object] = {
        "sub": user_id,
        "roles": list(roles),
        "iat": now,
        "exp": now + int(ttl),
    }
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm=algorithm)
