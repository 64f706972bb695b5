"""Settings: defaults, casting, bounds and the serving requirements."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifyd import config
from notifyd.config import Settings, validate
from notifyd.core.errors import ConfigError
from units.fakes import SECRET


def test_settings_defaults_and_casting() -> None:
    s = config.load(
        {
            "NOTIFYD_PORT": "9000",
            "NOTIFYD_JWT_ALGORITHMS": "hs256, RS256",
            "NOTIFYD_ALLOWED_ORIGINS": "https://a, https://b",
            "NOTIFYD_AUTH_TIMEOUT": "2.5",
        }
    )
    assert s.port == 9000 and s.host == "127.0.0.1"
    assert s.jwt_algorithms == ("HS256", "RS256")
    assert s.allowed_origins == ("https://a", "https://b") and s.auth_timeout == 2.5
    with pytest.raises(ConfigError, match="NOTIFYD_AUTH_TIMEOUT"):
        config.load({"NOTIFYD_AUTH_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="NOTIFYD_ALLOWED_ORIGINS"):
        config.load({"NOTIFYD_ALLOWED_ORIGINS": " , "})


def test_settings_file_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('port = "x"\n')
    with pytest.raises(ConfigError, match="NOTIFYD_PORT"):
        config.load({}, path)
    path.write_text("port = true\n")
    with pytest.raises(ConfigError, match="NOTIFYD_PORT"):
        config.load({}, path)
    path.write_text("allowed_origins = [1]\n")
    with pytest.raises(ConfigError, match="NOTIFYD_ALLOWED_ORIGINS"):
        config.load({}, path)
    path.write_text("host = 5\n")
    with pytest.raises(ConfigError, match="NOTIFYD_HOST"):
        config.load({}, path)
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load({}, path)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config.load({"NOTIFYD_JWT_SECRET_FILE": str(empty)})
    with pytest.raises(ConfigError, match="either"):
        config.load({"NOTIFYD_JWT_SECRET_FILE": str(empty), "NOTIFYD_JWT_SECRET": SECRET})
    not_pem = tmp_path / "k"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="PEM"):
        config.load({"NOTIFYD_JWT_PUBLIC_KEY_FILE": str(not_pem)})
    with pytest.raises(ConfigError, match="ASCII"):
        config.load({"NOTIFYD_JWT_COOKIE": "sessión"})


def test_serving_requirements() -> None:
    with pytest.raises(ConfigError, match="NOTIFYD_DSN"):
        config.require_serving(config.load({"NOTIFYD_JWT_SECRET": SECRET}))
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_SECRET"):
        config.require_serving(config.load({"NOTIFYD_DSN": "postgresql://x/y"}))
    config.require_serving(
        config.load({"NOTIFYD_DSN": "postgresql://x/y", "NOTIFYD_JWT_SECRET": SECRET})
    )


def test_presence_role_settings_are_role_names() -> None:
    settings = validate(Settings(presence_roles=("Admin",), presence_public_roles=("DOCTOR",)))
    assert settings.presence_roles == ("admin",)
    assert settings.presence_public_roles == ("doctor",)
    with pytest.raises(ConfigError, match="NOTIFYD_PRESENCE_ROLES"):
        validate(Settings(presence_roles=("\u00c4rzte",)))


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("yes", True), ("On", True), ("0", False), ("false", False), ("off", False)],
)
def test_boolean_settings_read_the_usual_spellings(raw: str, value: bool) -> None:
    assert config.load({"NOTIFYD_REUSE_PORT": raw}).reuse_port is value


def test_presence_roles_are_lower_cased_like_token_roles(tmp_path: Path) -> None:
    toml = tmp_path / "notifyd.toml"
    toml.write_text(
        'presence_roles = ["Admin"]\npresence_public_roles = ["Doctor"]\nreuse_port = true\n'
    )
    settings = config.load({}, toml)
    assert settings.presence_roles == ("admin",) and settings.presence_public_roles == ("doctor",)
    assert settings.reuse_port is True
