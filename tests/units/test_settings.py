"""Settings: the declarations, casting and bounds, the checks between settings, the key files'
texts, reloading and the serving requirements, all without reading a file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifyd.core import settings as s
from notifyd.core.errors import ConfigError
from notifyd.core.settings import Settings, parse
from units.fakes import SECRET

PEM = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----"


def test_every_field_is_declared_once_with_its_type_from_the_annotation() -> None:
    derived = {"jwt_public_key", "jwt_secrets"}
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert [d.key for d in s.DECLARATIONS] == [f for f in fields if f not in derived]
    kinds = {d.key: d.kind for d in s.DECLARATIONS}
    assert kinds["port"] == "int" and kinds["admin_port"] == "int"
    assert kinds["presence_ttl"] == "float" and kinds["reuse_port"] == "bool"
    assert kinds["jwt_algorithms"] == "list" and kinds["allowed_origins"] == "list"
    assert kinds["jwt_secret_file"] == "path" and kinds["dsn"] == "str"
    assert s.BY_KEY["max_frame_bytes"].env == "NOTIFYD_MAX_FRAME_BYTES"
    assert {d.key for d in s.DECLARATIONS if d.secret} == {"dsn", "jwt_secret", "redis_url"}
    assert all(d.help for d in s.DECLARATIONS)
    for d in s.DECLARATIONS:  # the defaults pass their own bounds
        if d.default is not None and d.kind in ("int", "float"):
            assert s.cast(d, str(d.default)) == d.default, d.key


def test_secrets_stay_out_of_repr_and_check_config() -> None:
    settings = parse(
        {"dsn": "postgresql://u:pw@db/app", "jwt_secret": SECRET, "redis_url": "redis://:rp@r"}
    )
    shown_in_repr = repr(settings)
    assert "pw" not in shown_in_repr and SECRET not in shown_in_repr and "rp@" not in shown_in_repr
    shown = settings.redacted()
    # of a URL, check-config hides the password only: where the daemon connects is what an
    # operator checks
    assert shown["dsn"] == "postgresql://u:***@db/app" and shown["redis_url"] == "redis://:***@r"
    assert shown["jwt_secret"] == "***"
    assert shown["jwt_algorithms"] == ["HS256"] and shown["port"] == 8765
    assert list(shown) == [d.key for d in s.DECLARATIONS]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://postgres@127.0.0.1:5432/postgres", None),
        ("postgresql:///app?host=/run/postgresql", None),
        (
            "postgresql://u:p%40w@h1:5432,h2/app?sslmode=require",
            "postgresql://u:***@h1:5432,h2/app?sslmode=require",
        ),
        (
            "postgresql://u@h/app?password=pw&sslpassword=k",
            "postgresql://u@h/app?password=***&sslpassword=***",
        ),
        ("postgresql://u:pw@h/app?pass%77ord=x", "postgresql://u:***@h/app?pass%77ord=***"),
        ("unix:///run/redis.sock?password=pw&db=0", "unix:///run/redis.sock?password=***&db=0"),
        ("rediss://:pw@r:6380/0", "rediss://:***@r:6380/0"),
        # whole: not a URL (a libpq key=value string), or an @ past the host (a password
        # holding a / ? or # would end the host part early)
        ("host=db user=u password=pw", "***"),
        ("postgresql://u:p/w@h/app", "***"),
        ("postgresql://u:p?w@h/app", "***"),
        ("postgresql://u:p#w@h/app", "***"),
    ],
)
def test_check_config_shows_a_url_without_its_password(url: str, shown: str | None) -> None:
    assert s.without_password(url) == (url if shown is None else shown)


@given(
    password=st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), min_size=1),
    query=st.sampled_from(["", "?sslmode=require", "?db=1&x=y"]),
)
def test_no_password_shows_through_check_config(password: str, query: str) -> None:
    """Whatever the password, what is shown is what a one-letter password shows (so nothing
    of it), or *** whole."""
    encoded = quote(password, safe="")
    for template, value in (
        ("postgresql://app:{}@db.internal:5432/app" + query, encoded),
        ("redis://:{}@cache:6379/0" + query, encoded),
        ("postgresql://app@db/app?sslmode=require&password={}", encoded),
        ("postgresql://app:{}@db.internal:5432/app" + query, password),  # mistyped, unencoded
    ):
        shown = s.without_password(template.format(value))
        assert shown in (s.without_password(template.format("x")), "***"), (template, value)
        if value is encoded:
            assert shown != "***"


def test_settings_defaults_and_casting() -> None:
    settings = parse(
        {
            "port": "9000",
            "jwt_algorithms": "hs256, RS256, eddsa",
            "allowed_origins": "https://a, https://b",
            "auth_timeout": "2.5",
            "jwt_secret_file": "/run/secret",
            "log_level": "debug",
        }
    )
    assert settings.port == 9000 and settings.host == "127.0.0.1"
    assert settings.jwt_algorithms == ("HS256", "RS256", "EdDSA")
    assert settings.allowed_origins == ("https://a", "https://b")
    assert settings.auth_timeout == 2.5 and settings.log_level == "DEBUG"
    assert settings.jwt_secret_file == Path("/run/secret")
    # TOML values: numbers, booleans and lists as they are
    toml = parse({"port": 9001, "reuse_port": True, "presence_roles": ["Admin", " ops "]})
    assert toml.port == 9001 and toml.reuse_port is True
    assert toml.presence_roles == ("admin", "ops")


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("yes", True), ("On", True), ("0", False), ("false", False), (" off ", False)],
)
def test_booleans_read_the_usual_spellings(raw: str, value: bool) -> None:
    assert parse({"reuse_port": raw}).reuse_port is value


@pytest.mark.parametrize(
    ("key", "raw", "problem"),
    [
        ("auth_timeout", "0", "must be at least 0.1, got 0.0"),
        ("port", "65536", "must be at most 65535, got 65536"),
        ("port", "http", "expected an integer, got 'http'"),
        ("port", "x", "expected an integer, got 'x'"),
        ("port", True, "expected a number, got True"),
        ("port", [1], "expected an integer, got [1]"),
        ("port", 3.5, "expected an integer, got 3.5"),  # a TOML float: refused, not truncated
        ("port", float("inf"), "expected an integer, got inf"),
        ("ping_interval", "nan", "expected a number, got 'nan'"),
        ("ping_interval", "inf", "must be at most 3600, got inf"),
        ("allowed_origins", " , ", "must not be empty"),
        ("allowed_origins", [1], "expected a comma-separated list"),
        ("reuse_port", "maybe", "expected true or false (1/0, yes/no, on/off), got 'maybe'"),
        ("host", 5, "expected a string, got 5"),
        ("jwt_algorithms", "none", "'none' is never accepted"),
        ("jwt_algorithms", "HS256,XS1", "unsupported algorithm 'XS1'"),
        ("log_level", "loud", "expected one of DEBUG, INFO, WARNING, ERROR"),
        ("jwt_cookie", "sessión", "must be an ASCII cookie name"),
        ("dsn", "mysql://db", "expected a postgresql:// URL"),
        ("redis_url", "http://r", "expected a redis://, rediss:// or unix:// URL"),
        ("jwt_secret", "short", "must be at least 32 bytes for HMAC"),
        ("presence_roles", "\u00c4rzte", "is not a role name"),
        ("presence_public_roles", "a b", "is not a role name"),
    ],
)
def test_a_bad_value_names_its_variable(key: str, raw: object, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({key: raw})
    name = "NOTIFYD_JWT_SECRET" if key == "jwt_secret" else s.BY_KEY[key].env
    assert caught.value.name == name
    assert problem in caught.value.problem


def test_layers_later_wins_and_every_value_is_cast() -> None:
    assert parse({"port": 1}, {"port": "2"}).port == 2
    with pytest.raises(ConfigError, match="NOTIFYD_PORT"):
        parse({"port": "x"}, {"port": "2"})  # a hidden bad value is still an error
    with pytest.raises(ConfigError, match="NOTIFYD_NOPE: not a setting"):
        parse({"nope": "1"})
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_SECRETS: not a setting"):
        parse({"jwt_secrets": "derived, not set"})


def test_key_files_texts_complete_the_settings() -> None:
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_SECRET_FILE: set either"):
        parse({"jwt_secret_file": "/s", "jwt_secret": SECRET})
    named = parse({"jwt_secret_file": "/s", "jwt_public_key_file": "/k"})
    assert named.jwt_secrets == ()  # not read yet
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_SECRET_FILE: /s is empty"):
        s.with_key_files(named, secret_file_text="\n", public_key_text=PEM)
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_PUBLIC_KEY_FILE: expected a PEM"):
        s.with_key_files(named, secret_file_text=SECRET, public_key_text="hello")
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_SECRET: must be at least 32 bytes"):
        s.with_key_files(named, secret_file_text=f"{SECRET}\nshort", public_key_text=PEM)
    new = "new-" + SECRET
    done = s.with_key_files(named, secret_file_text=f"{new}\n\n {SECRET} \n", public_key_text=PEM)
    assert done.jwt_secrets == (new, SECRET) and done.jwt_public_key == PEM
    # without HMAC, any secret length is the key owner's business
    rs = parse({"jwt_algorithms": "RS256", "jwt_secret": "short"})
    assert rs.jwt_secrets == ("short",)


def test_serving_requirements() -> None:
    with pytest.raises(ConfigError, match="NOTIFYD_DSN"):
        s.require_serving(parse({"jwt_secret": SECRET}))
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_SECRET"):
        s.require_serving(parse({"dsn": "postgresql://x/y"}))
    with pytest.raises(ConfigError, match="NOTIFYD_JWT_PUBLIC_KEY_FILE"):
        s.require_serving(parse({"dsn": "postgresql://d/b", "jwt_algorithms": "ES256"}))
    s.require_serving(parse({"dsn": "postgresql://x/y", "jwt_secret": SECRET}))


def test_reloaded_applies_what_reloads_and_names_what_needs_a_restart() -> None:
    current = parse({"port": "1", "rate_limit": "5", "jwt_public_key_file": "/k"})
    current = s.with_key_files(current, secret_file_text=None, public_key_text=PEM)
    fresh = parse({"port": "2", "rate_limit": "6", "jwt_public_key_file": "/k"})
    fresh = s.with_key_files(fresh, secret_file_text=None, public_key_text=PEM + "\n#")
    merged, changed, ignored = s.reloaded(current, fresh)
    assert merged.port == 1 and merged.rate_limit == 6
    assert changed == ["rate_limit", "jwt_public_key_file"]  # same file, new key
    assert ignored == ["port"]


def test_presence_role_settings_are_role_names() -> None:
    settings = parse({"presence_roles": "Admin", "presence_public_roles": ["DOCTOR"]})
    assert settings.presence_roles == ("admin",)
    assert settings.presence_public_roles == ("doctor",)
    with pytest.raises(ConfigError, match="NOTIFYD_PRESENCE_ROLES"):
        parse({"presence_roles": "\u00c4rzte"})
