"""The documents derived from the settings' declarations (notifyd.core.settings): the settings
table of docs/configuration.md and the example settings file systemd/notifyd.toml. `python -m
notifyd.core.settings_docs --markdown | --toml` prints them; tests/test_readme.py holds the page
and the example to them, so a setting added to the declarations shows up in both.

Pure like the declarations: imports no asyncio, asyncpg, redis or socket, and writes nothing but
to stdout.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Mapping, Sequence

from notifyd.core.settings import DECLARATIONS, Declaration


def _number(x: float) -> str:
    if not float(x).is_integer():
        return f"{x:g}"
    n = int(x)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return str(n)


def _bounds(declared: Declaration) -> str:
    low, high = declared.minimum, declared.maximum
    if low is not None and high is not None:
        return f"{_number(low)} to {_number(high)}"
    if low is not None:
        return f"at least {_number(low)}"
    if high is not None:
        return f"at most {_number(high)}"
    return ""


def _shown_default(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    if isinstance(value, float) and value == 0:
        return "`0`"
    return f"`{value}`"


def markdown_table() -> str:
    """The settings table of docs/configuration.md."""
    lines = [
        "| variable | type | default | bounds | reloads | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for d in DECLARATIONS:
        cells = (
            f"`{d.env}`",
            d.kind,
            _shown_default(d.default),
            _bounds(d),
            "yes" if d.reload else "no",
            d.help,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The example deployment of systemd/notifyd.toml (docs/operations.md, "Deploy on a Debian host
# with systemd"): the settings it sets, with why. Every other setting is shown commented out.
EXAMPLE_DEPLOYMENT: Mapping[str, tuple[object, str]] = {
    "dsn": (
        "postgresql://notifyd@/app?host=/var/run/postgresql",
        "Peer authentication over the local socket: the service's user notifyd is the role "
        "notifyd.",
    ),
    "host": ("127.0.0.1", "Behind nginx or Caddy on the same host."),
    "port": (8765, ""),
    "log_level": ("INFO", ""),
    "retention_days": (90, ""),
}

_TOML_HEADER = """\
# /etc/notifyd/notifyd.toml: settings for notifyd serve (docs/configuration.md).
# The environment (NOTIFYD_<KEY>) wins over this file. Keep secrets out of it: the JWT secret
# comes from the systemd credential jwt_secret, and a DSN with a password from the credential
# dsn. Every setting is here with its meaning; one commented out shows its default (or, when
# it has none, an example).
# Generated from notifyd/core/settings.py by: python -m notifyd.core.settings_docs --toml"""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def toml_example() -> str:
    """The example settings file, systemd/notifyd.toml."""
    out = [_TOML_HEADER]
    for d in DECLARATIONS:
        chosen = EXAMPLE_DEPLOYMENT.get(d.key)
        note = f"{d.help[:1].upper()}{d.help[1:]}."
        if d.minimum is not None or d.maximum is not None:
            note += f" Bounds: {_bounds(d)}."
        if d.reload:
            note += " Reloads on SIGHUP."
        if chosen is not None and chosen[1]:
            note += f" {chosen[1]}"
        out.append("")
        out.extend(textwrap.wrap(note, 98, initial_indent="# ", subsequent_indent="# "))
        if chosen is not None:
            out.append(f"{d.key} = {_toml_value(chosen[0])}")
        elif d.default is not None:
            out.append(f"# {d.key} = {_toml_value(d.default)}")
        elif d.example is not None:
            out.append(f"# {d.key} = {_toml_value(d.example)}")
        else:
            out.append(f"# {d.key}: a secret, not in this file ({d.env} or a systemd credential)")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m notifyd.core.settings_docs --markdown | --toml`: print the settings table of
    docs/configuration.md or the example settings file, as the declarations have them."""
    args = sys.argv[1:] if argv is None else list(argv)
    documents = {"--markdown": markdown_table, "--toml": toml_example}
    if len(args) != 1 or args[0] not in documents:
        print("usage: python -m notifyd.core.settings_docs --markdown | --toml", file=sys.stderr)
        return 2
    sys.stdout.write(documents[args[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
