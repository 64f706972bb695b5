# Frozen settings, and the only reader of NOTIFYD_* variables and the TOML config file.
# Every setting is declared once in SETTINGS (name, type, default, help); values are cast and
# validated strictly, and a bad one raises ConfigError naming the variable.
from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Setting:
    key: str  # lower-case key in the TOML file; the variable is NOTIFYD_<KEY>
    kind: str  # str, int, float, bool, list, path
    default: Any
    help: str
    secret: bool = False
    minimum: float | None = None
    maximum: float | None = None
    reload: bool = False  # SIGHUP applies a new value without a restart

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("dsn", "str", None, "PostgreSQL URL (required by serve and migrate)", secret=True),
    Setting("host", "str", "127.0.0.1", "listen address"),
    Setting("port", "int", 8765, "listen port (0 picks a free one)", minimum=0, maximum=65535),
    Setting("admin_host", "str", "127.0.0.1", "address of the admin listener"),
    Setting(
        "admin_port",
        "int",
        None,
        "port of a listener for /healthz, /readyz and /metrics only, for this process alone "
        "(when set, /metrics leaves the public port)",
        minimum=0,
        maximum=65535,
    ),
    Setting("jwt_secret", "str", None, "HS256 secret", secret=True, reload=True),
    Setting(
        "jwt_secret_file",
        "path",
        None,
        "file holding the HS256 secret (one per line: all are accepted, the first signs)",
        reload=True,
    ),
    Setting("jwt_public_key_file", "path", None, "PEM public key for RS256/ES256", reload=True),
    Setting("jwt_algorithms", "list", ("HS256",), "allow-list of JWT algorithms", reload=True),
    Setting("jwt_audience", "str", None, "required `aud` when set", reload=True),
    Setting("jwt_issuer", "str", None, "required `iss` when set", reload=True),
    Setting("jwt_user_claim", "str", "sub", "claim holding the user id", reload=True),
    Setting(
        "jwt_roles_claim",
        "str",
        "roles",
        "list claim of roles (a string `role` is read too)",
        reload=True,
    ),
    Setting(
        "jwt_cookie",
        "str",
        None,
        "cookie that may carry the JWT (allowed Origins only)",
        reload=True,
    ),
    Setting(
        "allowed_origins",
        "list",
        None,
        "Origins allowed to connect; others get HTTP 403",
        reload=True,
    ),
    Setting("redis_url", "str", None, "Redis URL for cluster-wide presence", secret=True),
    Setting("redis_prefix", "str", "notifyd:", "prefix of notifyd's Redis keys and channel"),
    Setting("presence_roles", "list", ("admin",), "roles that see presence events and may query"),
    Setting(
        "presence_public_roles",
        "list",
        None,
        "roles whose users' presence anyone may query (e.g. doctor)",
    ),
    Setting(
        "presence_ttl",
        "float",
        30.0,
        "seconds within which a dead process's users go offline cluster-wide",
        minimum=1,
        maximum=3600,
    ),
    Setting(
        "reuse_port", "bool", False, "bind with SO_REUSEPORT so several processes share the port"
    ),
    Setting(
        "max_frame_bytes",
        "int",
        65536,
        "largest client message (its fragments together); larger ones close with 1009",
        minimum=256,
        maximum=16 * 2**20,
        reload=True,
    ),
    Setting(
        "auth_timeout",
        "float",
        10.0,
        "seconds to wait for a first `auth` frame",
        minimum=0.1,
        maximum=300,
        reload=True,
    ),
    Setting(
        "ping_interval",
        "float",
        20.0,
        "seconds between WebSocket keepalive pings",
        minimum=0.1,
        maximum=3600,
        reload=True,
    ),
    Setting(
        "ping_timeout",
        "float",
        20.0,
        "seconds without anything from the client after a ping before closing (1011)",
        minimum=0.1,
        maximum=3600,
        reload=True,
    ),
    Setting(
        "sync_limit",
        "int",
        100,
        "default items per stream in a sync-response",
        minimum=1,
        maximum=1000,
        reload=True,
    ),
    Setting(
        "max_response_bytes",
        "int",
        1048576,
        "bytes of notifications in one sync-response or poll answer; more wait for the next "
        "page (a single larger notification goes alone)",
        minimum=1024,
        maximum=2**30,
        reload=True,
    ),
    Setting(
        "max_send_buffer",
        "int",
        1048576,
        "bytes that may wait for a client before the next frame closes it with 4008",
        minimum=4096,
        maximum=2**30,
        reload=True,
    ),
    Setting(
        "rate_limit",
        "float",
        20.0,
        "client frames (pings, pongs, fragments too) per second per connection (sustained)",
        minimum=0.1,
        maximum=100000,
        reload=True,
    ),
    Setting(
        "rate_burst",
        "int",
        40,
        "client frames a connection may send at once",
        minimum=1,
        maximum=100000,
        reload=True,
    ),
    Setting(
        "max_connections_per_user",
        "int",
        20,
        "live connections per user on one process",
        minimum=1,
        maximum=100000,
        reload=True,
    ),
    Setting(
        "max_http_requests_per_user",
        "int",
        8,
        "/v1 requests of one user in flight on one process; more get HTTP 429",
        minimum=1,
        maximum=100000,
        reload=True,
    ),
    Setting(
        "shutdown_timeout",
        "float",
        10.0,
        "seconds to close connections on SIGTERM",
        minimum=0,
        maximum=600,
        reload=True,
    ),
    Setting("log_level", "str", "INFO", "DEBUG, INFO, WARNING or ERROR", reload=True),
    Setting(
        "retention_days",
        "float",
        0.0,
        "notifications older than this are pruned in small batches; 0 keeps everything",
        minimum=0,
        maximum=36500,
        reload=True,
    ),
)
_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    # Secrets are left out of repr(): a logged or printed Settings never shows them.
    dsn: str | None = dataclasses.field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8765
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    jwt_secret: str | None = dataclasses.field(default=None, repr=False)
    jwt_secret_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_user_claim: str = "sub"
    jwt_roles_claim: str = "roles"
    jwt_cookie: str | None = None
    allowed_origins: tuple[str, ...] | None = None
    redis_url: str | None = dataclasses.field(default=None, repr=False)
    redis_prefix: str = "notifyd:"
    presence_roles: tuple[str, ...] = ("admin",)
    presence_public_roles: tuple[str, ...] | None = None
    presence_ttl: float = 30.0
    reuse_port: bool = False
    max_frame_bytes: int = 65536
    auth_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    sync_limit: int = 100
    max_response_bytes: int = 1048576
    max_send_buffer: int = 1048576
    rate_limit: float = 20.0
    rate_burst: int = 40
    max_connections_per_user: int = 20
    max_http_requests_per_user: int = 8
    shutdown_timeout: float = 10.0
    log_level: str = "INFO"
    retention_days: float = 0.0
    # Not settings: derived at load time.
    jwt_public_key: str | None = dataclasses.field(default=None, repr=False)
    jwt_secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # jwt_secret's lines

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The effective settings as printed by `check-config`: secrets shown as ***."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            value = getattr(self, s.key)
            if s.secret and value is not None:
                value = "***"
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[s.key] = value
        return out


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


def _cast(setting: Setting, raw: Any) -> Any:
    name = setting.env
    if setting.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _BOOLEANS:
            return _BOOLEANS[raw.strip().lower()]
        raise ConfigError(name, f"expected true or false (1/0, yes/no, on/off), got {raw!r}")
    if setting.kind == "list":
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
    if setting.kind in ("int", "float"):
        caster: Callable[[Any], Any] = int if setting.kind == "int" else float
        if isinstance(raw, bool):
            raise ConfigError(name, f"expected a number, got {raw!r}")
        try:
            value = caster(raw)
        except (TypeError, ValueError):
            expected = "an integer" if setting.kind == "int" else "a number"
            raise ConfigError(name, f"expected {expected}, got {raw!r}") from None
        if setting.minimum is not None and value < setting.minimum:
            raise ConfigError(name, f"must be at least {setting.minimum:g}, got {value}")
        if setting.maximum is not None and value > setting.maximum:
            raise ConfigError(name, f"must be at most {setting.maximum:g}, got {value}")
        return value
    if not isinstance(raw, str):
        raise ConfigError(name, f"expected a string, got {raw!r}")
    if setting.kind == "path":
        return Path(raw)
    return raw


def _read_file(name: str, path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(name, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(name, f"{path} is not UTF-8 text") from None


def load(
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Read the TOML file (if any), then the environment on top of it, validate, and return."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or env.get("NOTIFYD_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError("NOTIFYD_CONFIG", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("NOTIFYD_CONFIG", f"{path} is not valid TOML: {exc}") from None
        for key, raw in data.items():
            setting = _BY_KEY.get(key)
            if setting is None:
                raise ConfigError("NOTIFYD_CONFIG", f"unknown setting {key!r} in {path}")
            values[key] = _cast(setting, raw)
    for setting in SETTINGS:
        if setting.env in env and env[setting.env] != "":
            values[setting.key] = _cast(setting, env[setting.env])
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials:
        _from_credentials(Path(credentials), values)
    return validate(Settings(**values))


def _from_credentials(directory: Path, values: dict[str, Any]) -> None:
    """systemd credentials (LoadCredential=NAME:PATH) named after a secret setting fill it
    when neither the environment nor the file set it."""
    if "jwt_secret" not in values and "jwt_secret_file" not in values:
        candidate = directory / "jwt_secret"
        if candidate.exists():
            values["jwt_secret_file"] = candidate
    for key in ("dsn", "redis_url"):
        candidate = directory / key
        if key not in values and candidate.exists():
            values[key] = _cast(_BY_KEY[key], _read_file(f"credential {key}", candidate))


def validate(settings: Settings) -> Settings:
    """Check relations between settings and read key files; returns the completed settings."""
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
    secret = settings.jwt_secret
    if settings.jwt_secret_file is not None:
        if secret is not None:
            raise ConfigError("NOTIFYD_JWT_SECRET_FILE", "set either this or NOTIFYD_JWT_SECRET")
        secret = _read_file("NOTIFYD_JWT_SECRET_FILE", settings.jwt_secret_file)
        if not secret:
            raise ConfigError("NOTIFYD_JWT_SECRET_FILE", f"{settings.jwt_secret_file} is empty")
        changes["jwt_secret"] = secret
    hmac = any(a.startswith("HS") for a in algorithms)
    # Several secrets, one per line, during a rotation: tokens signed with any are accepted.
    secrets = tuple(line.strip() for line in (secret or "").splitlines() if line.strip())
    if hmac and any(len(one.encode()) < 32 for one in secrets):
        raise ConfigError("NOTIFYD_JWT_SECRET", "must be at least 32 bytes for HMAC")
    changes["jwt_secrets"] = secrets
    if settings.jwt_public_key_file is not None:
        pem = _read_file("NOTIFYD_JWT_PUBLIC_KEY_FILE", settings.jwt_public_key_file)
        if "PUBLIC KEY" not in pem:
            raise ConfigError("NOTIFYD_JWT_PUBLIC_KEY_FILE", "expected a PEM public key")
        changes["jwt_public_key"] = pem
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


def _role_names(env: str, roles: tuple[str, ...]) -> tuple[str, ...]:
    named = []
    for raw in roles:
        name = role_name(raw)
        if name is None:
            raise ConfigError(env, f"{raw[:40]!r} is not a role name ({ROLE_RULE})")
        named.append(name)
    return tuple(named)


def require_serving(settings: Settings) -> None:
    """What `serve` needs beyond a valid file: a database and a key for every allowed algorithm."""
    if not settings.dsn:
        raise ConfigError("NOTIFYD_DSN", "required")
    if any(a.startswith("HS") for a in settings.jwt_algorithms) and not settings.jwt_secrets:
        raise ConfigError("NOTIFYD_JWT_SECRET", "required for HS* algorithms")
    if any(not a.startswith("HS") for a in settings.jwt_algorithms) and not settings.jwt_public_key:
        raise ConfigError("NOTIFYD_JWT_PUBLIC_KEY_FILE", "required for RS/ES/PS/EdDSA algorithms")


def reloaded(current: Settings, fresh: Settings) -> tuple[Settings, list[str], list[str]]:
    """What SIGHUP applies: `fresh` (valid, just loaded) for the settings that reload, the
    current values for the rest. Returns the result, the settings that changed, and those
    that changed but need a restart (kept as they are)."""
    keep = {s.key: getattr(current, s.key) for s in SETTINGS if not s.reload}
    merged = dataclasses.replace(fresh, **keep)
    changed = [
        s.key for s in SETTINGS if s.reload and getattr(merged, s.key) != getattr(current, s.key)
    ]
    if merged.jwt_public_key != current.jwt_public_key and "jwt_public_key_file" not in changed:
        changed.append("jwt_public_key_file")  # same file, new key
    ignored = [
        s.key for s in SETTINGS if not s.reload and getattr(fresh, s.key) != getattr(current, s.key)
    ]
    return merged, changed, ignored
