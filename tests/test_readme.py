# The README is part of the product: its test command is the one CI runs, every setting is in
# its table, and its SQL examples run against a migrated database.
from __future__ import annotations

import re

from support import ROOT, Daemon

from notifyd.config import SETTINGS

README = (ROOT / "README.md").read_text()


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_the_two_commands_come_first_and_ci_runs_the_test_command() -> None:
    blocks = shell_blocks(README)
    assert "notifyd dev" in blocks[0]
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


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


def test_every_setting_is_in_the_configuration_table() -> None:
    """Type, default and whether SIGHUP reloads it, as the code has them, for every setting."""
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| `(NOTIFYD_[A-Z_]+)` \| (\w+) \| ([^|]+) \| (yes|no) \|", README, re.M)}
    for setting in SETTINGS:
        assert setting.env in rows, setting.env
        kind, default, reloads = rows[setting.env]
        assert kind == setting.kind, setting.env
        assert default.strip() == _shown_default(setting.default), setting.env
        assert reloads == ("yes" if setting.reload else "no"), setting.env
    assert set(rows) == {s.env for s in SETTINGS}


async def test_readme_sql_examples_run(daemon: Daemon) -> None:
    blocks = re.findall(r"```sql\n(.*?)```", README, re.S)
    pool = await daemon.pool()
    await pool.execute("CREATE TABLE appointments (id serial, doctor_id text, patient_name text)")
    for block in blocks:
        await pool.execute(block.replace("WHERE id = 123", "WHERE id = 1"))
    await pool.execute("INSERT INTO appointments (doctor_id, patient_name) VALUES ('7', 'Ann')")
    assert await daemon.sql("SELECT count(*) FROM notifyd.notifications WHERE user_id = '7'") == 1
