"""Reading the settings: the only reader of NOTIFYD_* variables, the TOML settings file, the
key files (jwt_secret_file, jwt_public_key_file) and systemd credentials.

It gathers raw values and texts and hands them to notifyd.core.settings, which declares every
setting, casts, bounds and checks them; nothing about a setting is declared here. `load` is
what the commands and SIGHUP call; `validate` completes a `Settings` built in code (tests,
`notifyd dev`) as `load` does. Imports no asyncio, asyncpg, redis or socket.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from notifyd.core import settings as declared
from notifyd.core.errors import ConfigError
from notifyd.core.settings import Settings, reloaded, require_serving

__all__ = ["Settings", "load", "reloaded", "require_serving", "validate"]


def load(
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Read the TOML file (if any), then the environment on top of it, then the systemd
    credentials for what neither set; check, read the key files, and return."""
    env = os.environ if environ is None else environ
    layers: list[Mapping[str, object]] = []
    path = config_file or env.get("NOTIFYD_CONFIG")
    if path:
        layers.append(_read_toml(Path(path)))
    layers.append({d.key: env[d.env] for d in declared.DECLARATIONS if env.get(d.env, "") != ""})
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials:
        given = {key for layer in layers for key in layer}
        layers.append(_from_credentials(Path(credentials), given))
    return _with_key_files(declared.parse(*layers))


def validate(settings: Settings) -> Settings:
    """Check settings built in code as `load` checks those it reads, and read their key files."""
    return _with_key_files(declared.check(settings))


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("NOTIFYD_CONFIG", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("NOTIFYD_CONFIG", f"{path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in declared.BY_KEY:
            raise ConfigError("NOTIFYD_CONFIG", f"unknown setting {key!r} in {path}")
    return data


def _from_credentials(directory: Path, given: set[str]) -> dict[str, object]:
    """systemd credentials (LoadCredential=NAME:PATH) named after a secret setting fill it
    when neither the environment nor the file set it."""
    values: dict[str, object] = {}
    if "jwt_secret" not in given and "jwt_secret_file" not in given:
        candidate = directory / "jwt_secret"
        if candidate.exists():
            values["jwt_secret_file"] = str(candidate)
    for key in ("dsn", "redis_url"):
        candidate = directory / key
        if key not in given and candidate.exists():
            values[key] = _read_file(f"credential {key}", candidate)
    return values


def _with_key_files(settings: Settings) -> Settings:
    secret, pem = None, None
    if settings.jwt_secret_file is not None:
        secret = _read_file("NOTIFYD_JWT_SECRET_FILE", settings.jwt_secret_file)
    if settings.jwt_public_key_file is not None:
        pem = _read_file("NOTIFYD_JWT_PUBLIC_KEY_FILE", settings.jwt_public_key_file)
    return declared.with_key_files(settings, secret_file_text=secret, public_key_text=pem)


def _read_file(name: str, path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(name, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(name, f"{path} is not UTF-8 text") from None
