"""Settings: defaults, casting, bounds and the serving requirements."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifyd import config
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
