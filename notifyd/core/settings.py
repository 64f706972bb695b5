"""Every setting of notifyd, declared once, and the pure parse of raw values into `Settings`.

A setting is one field of the frozen `Settings` dataclass, declared with `setting(...)`: its
name is the key in the TOML file (`NOTIFYD_<KEY>` in the environment), its annotation is its
type, and the declaration carries its default, bounds, help, whether it is a secret (never in
`repr()`, `***` in `check-config`) and whether SIGHUP reloads it. `DECLARATIONS` is derived from
those fields; from it come the casting and bounds checks here, `notifyd check-config`, the
settings table of docs/configuration.md and the example settings file
(notifyd.core.settings_docs; a test holds the page and systemd/notifyd.toml to them). Adding a
setting is one field here plus its use.

Also here, pure as well: the checks between settings (`check`), the key files' contents
(`with_key_files`), what SIGHUP applies (`reloaded`) and what `serve` needs
(`require_serving`). A bad value raises ConfigError naming the variable.

Imports no asyncio, asyncpg, redis or socket, and reads no file and no environment variable:
notifyd.config reads the environment, the TOML file and the key files and hands the raw values
and texts here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote_plus

from notifyd.core.errors import ConfigError
from notifyd.core.roles import ROLE_RULE, role_name

ENV_PREFIX = "NOTIFYD_"
SUPPORTED_ALGORITHMS = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
        "EdDSA",
    }
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Declaration:
    """One setting as declared on its `Settings` field."""

    key: str  # lower-case key in the TOML file; the variable is NOTIFYD_<KEY>
    kind: str  # from the field's annotation: str, int, float, bool, list, path
    default: object
    help: str
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False  # left out of repr(), shown as *** by check-config
    url: bool = False  # a secret URL: check-config shows it with only its password as ***
    reload: bool = False  # SIGHUP applies a new value without a restart
    example: object = None  # shown (commented out) in the example file when there is no default

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


def setting(
    default: _T,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool = False,
    url: bool = False,
    reload: bool = False,
    example: object = None,
) -> _T:
    """Declare a `Settings` field as a setting (the field's annotation is its type). `url`:
    a URL that may hold a password, a secret whose other parts check-config shows."""
    declared = Declaration(
        "", "", default, help, minimum, maximum, secret or url, url, reload, example
    )
    return dataclasses.field(
        default=default, repr=not declared.secret, metadata={"setting": declared}
    )


@dataclass(frozen=True)
class Settings:
    dsn: str | None = setting(None, "PostgreSQL URL (required by serve and migrate)", url=True)
    host: str = setting("127.0.0.1", "listen address")
    port: int = setting(8765, "listen port (0 picks a free one)", minimum=0, maximum=65535)
    admin_host: str = setting("127.0.0.1", "address of the admin listener")
    admin_port: int | None = setting(
        None,
        "a second listener, for this process alone, answering only `/healthz`, `/readyz` and "
        "`/metrics`; when set, `/metrics` leaves the public port (see Operations)",
        minimum=0,
        maximum=65535,
        example=9100,
    )
    jwt_secret: str | None = setting(
        None, "HS256 secret, at least 32 bytes", secret=True, reload=True
    )
    jwt_secret_file: Path | None = setting(
        None,
        "file holding the HS256 secret; several, one per line, during a rotation: tokens signed "
        "with any are accepted, the first signs `notifyd token`",
        reload=True,
        example="/etc/notifyd/jwt_secret",
    )
    jwt_public_key_file: Path | None = setting(
        None,
        "PEM public key for RS256/ES256 (and RS384/512, ES384/512, PS*, EdDSA)",
        reload=True,
        example="/etc/notifyd/jwt_public_key.pem",
    )
    jwt_algorithms: tuple[str, ...] = setting(
        ("HS256",),
        "comma-separated allow-list of JWT algorithms; `none` is refused",
        reload=True,
    )
    jwt_audience: str | None = setting(None, "required `aud` when set", reload=True, example="app")
    jwt_issuer: str | None = setting(
        None, "required `iss` when set", reload=True, example="https://id.example.com"
    )
    jwt_user_claim: str = setting(
        "sub", "claim holding the user id (a string or an integer)", reload=True
    )
    jwt_roles_claim: str = setting(
        "roles",
        "list claim of roles (a string claim `role` is read too); `A`-`Z` lower-cased, and a "
        "role that is not 1 to 128 visible ASCII characters is dropped (protocol/README.md, "
        '"Role names")',
        reload=True,
    )
    jwt_cookie: str | None = setting(
        None,
        "cookie that may carry the JWT; honoured only with `NOTIFYD_ALLOWED_ORIGINS` and an "
        "allowed `Origin`",
        reload=True,
        example="session",
    )
    allowed_origins: tuple[str, ...] | None = setting(
        None,
        "Origins allowed to connect; a handshake with another `Origin` gets HTTP 403 (clients "
        "that send none, such as mobile apps, authenticate by token)",
        reload=True,
        example=("https://app.example.com",),
    )
    redis_url: str | None = setting(
        None,
        "Redis URL (`redis://`, `rediss://`, `unix://`) for cluster-wide presence; without it "
        "presence is per process",
        url=True,
        example="redis://127.0.0.1:6379/0",
    )
    redis_prefix: str = setting(
        "notifyd:",
        "prefix of notifyd's Redis keys and channel (several clusters may share one Redis)",
    )
    presence_roles: tuple[str, ...] = setting(
        ("admin",),
        "roles that receive every presence event and may query anyone's presence",
    )
    presence_public_roles: tuple[str, ...] | None = setting(
        None,
        "roles whose users' presence (and online count) any authenticated user may query, "
        "e.g. `doctor`",
        example=("doctor",),
    )
    presence_ttl: float = setting(
        30.0,
        "seconds within which the users of a process that died without closing go offline "
        "cluster-wide",
        minimum=1,
        maximum=3600,
    )
    reuse_port: bool = setting(
        False,
        "bind with SO_REUSEPORT so several processes on one host share the port (`1`/`0`, "
        "`true`/`false`, `yes`/`no`, `on`/`off`)",
    )
    max_frame_bytes: int = setting(
        65536,
        "largest client message (a fragmented one: all its fragments together); larger ones "
        "close with 1009",
        minimum=256,
        maximum=16 * 2**20,
        reload=True,
    )
    auth_timeout: float = setting(
        10.0,
        "seconds to wait for a first `auth` frame (close 4001)",
        minimum=0.1,
        maximum=300,
        reload=True,
    )
    ping_interval: float = setting(
        20.0,
        "seconds of silence before a WebSocket keepalive ping",
        minimum=0.1,
        maximum=3600,
        reload=True,
    )
    ping_timeout: float = setting(
        20.0,
        "seconds without anything from the client after that ping before closing (1011)",
        minimum=0.1,
        maximum=3600,
        reload=True,
    )
    sync_limit: int = setting(
        100,
        "default items per stream in a sync-response (a request may ask up to 1000)",
        minimum=1,
        maximum=1000,
        reload=True,
    )
    max_response_bytes: int = setting(
        1048576,
        "bytes of notifications in one sync-response or poll answer; the rest follows page by "
        "page (`hasMore`), and a single larger notification comes alone",
        minimum=1024,
        maximum=2**30,
        reload=True,
    )
    max_send_buffer: int = setting(
        1048576,
        "bytes that may wait for a client (notifications, replies, pongs: everything written "
        "to it) before the next frame closes it with 4008 (too slow); a connection holds at "
        "most this plus one frame",
        minimum=4096,
        maximum=2**30,
        reload=True,
    )
    rate_limit: float = setting(
        20.0,
        "client frames per second per connection, pings, pongs and fragments included; faster "
        "ones get `rate-limited` (a ping: no pong), persistent abuse closes with 1008",
        minimum=0.1,
        maximum=100000,
        reload=True,
    )
    rate_burst: int = setting(
        40,
        "client frames a connection may send at once",
        minimum=1,
        maximum=100000,
        reload=True,
    )
    max_connections_per_user: int = setting(
        20,
        "live connections per user on one process; more get HTTP 429 (1008 after an `auth` frame)",
        minimum=1,
        maximum=100000,
        reload=True,
    )
    max_http_requests_per_user: int = setting(
        8,
        "`/v1` requests per user in flight on one process, each until its answer has been "
        "sent; more get HTTP 429 `too-many-requests`",
        minimum=1,
        maximum=100000,
        reload=True,
    )
    shutdown_timeout: float = setting(
        10.0,
        "seconds to close connections on SIGTERM",
        minimum=0,
        maximum=600,
        reload=True,
    )
    log_level: str = setting(
        "INFO", "DEBUG, INFO, WARNING or ERROR; logs are JSON lines on stderr", reload=True
    )
    retention_days: float = setting(
        0.0,
        "notifications older than this many days are pruned in small batches (every 10 "
        "minutes or so); `0` keeps everything. A sync-request with a cursor older than what is "
        "kept gets the stream in `reset`",
        minimum=0,
        maximum=36500,
        reload=True,
    )
    # Not settings: derived from the key files (with_key_files) or jwt_secret (check).
    jwt_public_key: str | None = dataclasses.field(default=None, repr=False)
    jwt_secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # one per line

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The effective settings as printed by `check-config`: secrets shown as ***, and of a
        URL only its password."""
        out: dict[str, Any] = {}
        for declared in DECLARATIONS:
            value = getattr(self, declared.key)
            if declared.url and value is not None:
                value = without_password(value)
            elif declared.secret and value is not None:
                value = "***"
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[declared.key] = value
        return out


_PASSWORD_PARAMETERS = frozenset({"password", "sslpassword"})


def without_password(url: str) -> str:
    """`url` with its password as *** (in the user part, and in a `password` or `sslpassword`
    query parameter), the rest as written; a value that is not a URL with a scheme (a libpq
    `key=value` string, say) is *** whole."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.isascii() or not scheme.replace("+", "").isalnum():
        return "***"
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    netloc, tail = (rest, "") if end < 0 else (rest[:end], rest[end:])
    if "@" in tail:
        return "***"  # an @ after the host: maybe a password holding a /, ? or #
    users, at, hosts = netloc.rpartition("@")
    if at and ":" in users:
        netloc = f"{users.partition(':')[0]}:***@{hosts}"
    before, question, query = tail.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        fields = []
        for field in query.split("&"):
            key = unquote_plus(field.partition("=")[0])
            fields.append(
                f"{field.partition('=')[0]}=***" if key in _PASSWORD_PARAMETERS else field
            )
        tail = f"{before}?{'&'.join(fields)}{hash_}{fragment}"
    return f"{scheme}://{netloc}{tail}"


_KINDS: dict[object, str] = {str: "str", int: "int", float: "float", bool: "bool", Path: "path"}


def _kind(annotation: object) -> str:
    """str | None -> "str", tuple[str, ...] -> "list", Path -> "path", ..."""
    if isinstance(annotation, types.UnionType):
        (annotation,) = (a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return "list"
    return _KINDS[annotation]


def _declarations() -> tuple[Declaration, ...]:
    hints = typing.get_type_hints(Settings)
    return tuple(
        dataclasses.replace(f.metadata["setting"], key=f.name, kind=_kind(hints[f.name]))
        for f in dataclasses.fields(Settings)
        if "setting" in f.metadata
    )


DECLARATIONS: tuple[Declaration, ...] = _declarations()
BY_KEY: Mapping[str, Declaration] = {d.key: d for d in DECLARATIONS}

# ---- parsing -------------------------------------------------------------------------------

_BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def cast(declared: Declaration, raw: object) -> Any:
    """One raw value (a string from the environment, a TOML value) as its setting's type,
    within its bounds."""
    name = declared.env
    if declared.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _BOOLEANS:
            return _BOOLEANS[raw.strip().lower()]
        raise ConfigError(name, f"expected true or false (1/0, yes/no, on/off), got {raw!r}")
    if declared.kind == "list":
        if isinstance(raw, str):
            items = [part.strip() for part in raw.split(",")]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            items = [x.strip() for x in raw]
        else:
            raise ConfigError(name, "expected a comma-separated list")
        items = [x for x in items if x]
        if not items:
            raise ConfigError(name, "must not be empty")
        return tuple(items)
    if declared.kind in ("int", "float"):
        expected = "an integer" if declared.kind == "int" else "a number"
        if isinstance(raw, bool):
            raise ConfigError(name, f"expected a number, got {raw!r}")
        if not isinstance(raw, str | int | float) or (
            declared.kind == "int" and isinstance(raw, float)
        ):
            # a TOML float for an integer is refused, not truncated (nor inf, an OverflowError)
            raise ConfigError(name, f"expected {expected}, got {raw!r}")
        value: float
        try:
            value = int(raw) if declared.kind == "int" else float(raw)
        except ValueError:
            raise ConfigError(name, f"expected {expected}, got {raw!r}") from None
        if value != value:  # NaN passes every comparison with the bounds
            raise ConfigError(name, f"expected {expected}, got {raw!r}")
        if declared.minimum is not None and value < declared.minimum:
            raise ConfigError(name, f"must be at least {declared.minimum:g}, got {value}")
        if declared.maximum is not None and value > declared.maximum:
            raise ConfigError(name, f"must be at most {declared.maximum:g}, got {value}")
        return value
    if not isinstance(raw, str):
        raise ConfigError(name, f"expected a string, got {raw!r}")
    if declared.kind == "path":
        return Path(raw)
    return raw


def parse(*layers: Mapping[str, object]) -> Settings:
    """Settings from raw values, checked (`check`). Each layer maps setting keys to raw values;
    a later layer wins over an earlier one, and every value is cast, a hidden one too. The key
    files the result names are not read: `with_key_files` completes it with their texts."""
    values: dict[str, Any] = {}
    for layer in layers:
        for key, raw in layer.items():
            declared = BY_KEY.get(key)
            if declared is None:
                raise ConfigError(ENV_PREFIX + key.upper(), "not a setting")
            values[key] = cast(declared, raw)
    return check(Settings(**values))


def check(settings: Settings) -> Settings:
    """Check the relations between settings and normalise the names in them (algorithms, log
    level, roles); `jwt_secrets` are jwt_secret's lines. Returns the checked settings."""
    changes: dict[str, Any] = {}
    algorithms = tuple(
        a.upper() if a.lower() != "eddsa" else "EdDSA" for a in settings.jwt_algorithms
    )
    for alg in algorithms:
        if alg.lower() == "none":
            raise ConfigError("NOTIFYD_JWT_ALGORITHMS", "'none' is never accepted")
        if alg not in SUPPORTED_ALGORITHMS:
            raise ConfigError("NOTIFYD_JWT_ALGORITHMS", f"unsupported algorithm {alg!r}")
    changes["jwt_algorithms"] = algorithms
    if settings.log_level.upper() not in LOG_LEVELS:
        raise ConfigError("NOTIFYD_LOG_LEVEL", f"expected one of {', '.join(LOG_LEVELS)}")
    changes["log_level"] = settings.log_level.upper()
    if settings.jwt_secret_file is not None:
        if settings.jwt_secret is not None:
            raise ConfigError("NOTIFYD_JWT_SECRET_FILE", "set either this or NOTIFYD_JWT_SECRET")
    else:
        changes["jwt_secrets"] = _secrets(settings.jwt_secret, algorithms)
    if settings.port and settings.port < 0:
        raise ConfigError("NOTIFYD_PORT", "must not be negative")
    if settings.jwt_cookie is not None and not settings.jwt_cookie.isascii():
        raise ConfigError("NOTIFYD_JWT_COOKIE", "must be an ASCII cookie name")
    if settings.dsn is not None and not settings.dsn.startswith(("postgres://", "postgresql://")):
        raise ConfigError("NOTIFYD_DSN", "expected a postgresql:// URL")
    if settings.redis_url is not None and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError("NOTIFYD_REDIS_URL", "expected a redis://, rediss:// or unix:// URL")
    # Named as token roles are (notifyd.core.roles), the roles they are compared with.
    changes["presence_roles"] = _role_names("NOTIFYD_PRESENCE_ROLES", settings.presence_roles)
    if settings.presence_public_roles is not None:
        changes["presence_public_roles"] = _role_names(
            "NOTIFYD_PRESENCE_PUBLIC_ROLES", settings.presence_public_roles
        )
    return dataclasses.replace(settings, **changes)


def with_key_files(
    settings: Settings, *, secret_file_text: str | None, public_key_text: str | None
) -> Settings:
    """Checked settings completed with the texts of the files they name (read by the caller):
    jwt_secret_file's secrets and jwt_public_key_file's PEM."""
    changes: dict[str, Any] = {}
    if settings.jwt_secret_file is not None:
        secret = (secret_file_text or "").strip()
        if not secret:
            raise ConfigError("NOTIFYD_JWT_SECRET_FILE", f"{settings.jwt_secret_file} is empty")
        changes["jwt_secret"] = secret
        changes["jwt_secrets"] = _secrets(secret, settings.jwt_algorithms)
    if settings.jwt_public_key_file is not None:
        pem = (public_key_text or "").strip()
        if "PUBLIC KEY" not in pem:
            raise ConfigError("NOTIFYD_JWT_PUBLIC_KEY_FILE", "expected a PEM public key")
        changes["jwt_public_key"] = pem
    return dataclasses.replace(settings, **changes)


def _secrets(text: str | None, algorithms: Sequence[str]) -> tuple[str, ...]:
    # Several secrets, one per line, during a rotation: tokens signed with any are accepted.
    secrets = tuple(line.strip() for line in (text or "").splitlines() if line.strip())
    if any(a.startswith("HS") for a in algorithms) and any(len(s.encode()) < 32 for s in secrets):
        raise ConfigError("NOTIFYD_JWT_SECRET", "must be at least 32 bytes for HMAC")
    return secrets


def _role_names(env: str, roles: tuple[str, ...]) -> tuple[str, ...]:
    named = []
    for raw in roles:
        name = role_name(raw)
        if name is None:
            raise ConfigError(env, f"{raw[:40]!r} is not a role name ({ROLE_RULE})")
        named.append(name)
    return tuple(named)


# Where a secret can come from, said wherever one is missing
SECRET_HINT = (
    "(or NOTIFYD_JWT_SECRET_FILE naming a file that holds it; `notifyd dev` keeps its own in "
    ".notifyd-dev/jwt-secret)"
)


def require_serving(settings: Settings) -> None:
    """What `serve` needs beyond a valid file: a database and a key for every allowed algorithm."""
    if not settings.dsn:
        raise ConfigError("NOTIFYD_DSN", "required")
    if any(a.startswith("HS") for a in settings.jwt_algorithms) and not settings.jwt_secrets:
        raise ConfigError("NOTIFYD_JWT_SECRET", f"required for HS* algorithms {SECRET_HINT}")
    if any(not a.startswith("HS") for a in settings.jwt_algorithms) and not settings.jwt_public_key:
        raise ConfigError("NOTIFYD_JWT_PUBLIC_KEY_FILE", "required for RS/ES/PS/EdDSA algorithms")


def reloaded(current: Settings, fresh: Settings) -> tuple[Settings, list[str], list[str]]:
    """What SIGHUP applies: `fresh` (valid, just loaded) for the settings that reload, the
    current values for the rest. Returns the result, the settings that changed, and those
    that changed but need a restart (kept as they are)."""
    keep = {d.key: getattr(current, d.key) for d in DECLARATIONS if not d.reload}
    merged = dataclasses.replace(fresh, **keep)
    changed = [
        d.key
        for d in DECLARATIONS
        if d.reload and getattr(merged, d.key) != getattr(current, d.key)
    ]
    if merged.jwt_public_key != current.jwt_public_key and "jwt_public_key_file" not in changed:
        changed.append("jwt_public_key_file")  # same file, new key
    ignored = [
        d.key
        for d in DECLARATIONS
        if not d.reload and getattr(fresh, d.key) != getattr(current, d.key)
    ]
    return merged, changed, ignored
