"""notifyd.config, the reader: the TOML file under the environment, key files, and what goes
wrong reading them (each error names the variable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifyd import config
from notifyd.core.errors import ConfigError

SECRET = "config-secret-" + "c" * 32


def test_the_environment_wins_over_the_file_and_empty_variables_are_unset(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('port = 9001\nhost = "0.0.0.0"\nrate_limit = 5\n')
    loaded = config.load({"NOTIFYD_PORT": "9002", "NOTIFYD_HOST": ""}, path)
    assert loaded.port == 9002 and loaded.host == "0.0.0.0" and loaded.rate_limit == 5.0
    assert config.load({"NOTIFYD_CONFIG": str(path)}).port == 9001


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
    path.write_text("prot = 5\n")
    with pytest.raises(ConfigError, match="NOTIFYD_CONFIG: unknown setting 'prot'"):
        config.load({}, path)
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load({}, path)
    with pytest.raises(ConfigError, match="NOTIFYD_CONFIG: cannot read"):
        config.load({}, tmp_path / "missing.toml")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config.load({"NOTIFYD_JWT_SECRET_FILE": str(empty)})
    with pytest.raises(ConfigError, match="either"):
        config.load({"NOTIFYD_JWT_SECRET_FILE": str(empty), "NOTIFYD_JWT_SECRET": SECRET})
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_SECRET_FILE: cannot read"):
        config.load({"NOTIFYD_JWT_SECRET_FILE": str(tmp_path / "missing")})
    latin = tmp_path / "latin"
    latin.write_bytes(b"\xe9t\xe9")
    with pytest.raises(ConfigError, match=r"NOTIFYD_JWT_SECRET_FILE: .* is not UTF-8"):
        config.load({"NOTIFYD_JWT_SECRET_FILE": str(latin)})
    not_pem = tmp_path / "k"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="PEM"):
        config.load({"NOTIFYD_JWT_PUBLIC_KEY_FILE": str(not_pem)})
    with pytest.raises(ConfigError, match="ASCII"):
        config.load({"NOTIFYD_JWT_COOKIE": "sessión"})


def test_validate_reads_the_key_files_of_settings_built_in_code(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt_secret"
    secret_file.write_text(f"{SECRET}\n")
    settings = config.validate(config.Settings(jwt_secret_file=secret_file, log_level="warning"))
    assert settings.jwt_secrets == (SECRET,) and settings.log_level == "WARNING"
    assert config.validate(config.Settings(jwt_secret=SECRET)).jwt_secrets == (SECRET,)


def test_presence_roles_are_lower_cased_like_token_roles(tmp_path: Path) -> None:
    toml = tmp_path / "notifyd.toml"
    toml.write_text(
        'presence_roles = ["Admin"]\npresence_public_roles = ["Doctor"]\nreuse_port = true\n'
    )
    settings = config.load({}, toml)
    assert settings.presence_roles == ("admin",) and settings.presence_public_roles == ("doctor",)
    assert settings.reuse_port is True
