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


def test_every_setting_is_in_the_configuration_table() -> None:
    for setting in SETTINGS:
        assert f"| `{setting.env}` |" in README, setting.env


async def test_readme_sql_examples_run(daemon: Daemon) -> None:
    blocks = re.findall(r"```sql\n(.*?)```", README, re.S)
    pool = await daemon.pool()
    await pool.execute("CREATE TABLE appointments (id serial, doctor_id text, patient_name text)")
    for block in blocks:
        await pool.execute(block.replace("WHERE id = 123", "WHERE id = 1"))
    await pool.execute("INSERT INTO appointments (doctor_id, patient_name) VALUES ('7', 'Ann')")
    assert await daemon.sql("SELECT count(*) FROM notifyd.notifications WHERE user_id = '7'") == 1
