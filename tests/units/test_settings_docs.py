"""The documents generated from the settings' declarations: the Configuration page's table,
the example settings file, and the command that prints them."""

from __future__ import annotations

import pytest

from notifyd.core import settings as s
from notifyd.core import settings_docs as docs


def test_the_documents_come_from_the_declarations(capsys: pytest.CaptureFixture[str]) -> None:
    table = docs.markdown_table().splitlines()
    assert len(table) == 2 + len(s.DECLARATIONS)
    assert "| `NOTIFYD_PORT` | int | `8765` | 0 to 65535 | no | listen port" in table[4]
    assert "| 256 to 16 MiB | yes |" in docs.markdown_table()
    example = docs.toml_example()
    assert "\nport = 8765\n" in example and "\n# rate_burst = 40\n" in example
    assert "\n# jwt_secret: a secret, not in this file" in example
    assert docs.main(["--toml"]) == 0 and capsys.readouterr().out == example
    assert docs.main(["--markdown"]) == 0 and capsys.readouterr().out == docs.markdown_table()
    assert docs.main([]) == 2 and "usage" in capsys.readouterr().err
