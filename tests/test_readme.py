"""The README and the documentation site (docs/, built with MkDocs) are part of the product:
the README's test command is the one CI runs; the settings table and the example settings file
are generated from the settings' declarations; every SQL example runs against a migrated
database (the grants for an app's role included); the JSON examples parse; what they link to
exists; and the site builds with warnings as errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
from faults_support import http_get
from support import ROOT, Daemon

from notifyd import config
from notifyd.core import settings_docs

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
# every page the site serves, and the README: (path, text)
PAGES = [(ROOT / "README.md", README)] + [
    (page, page.read_text()) for page in sorted(DOCS.glob("*.md"))
]
EVERYTHING = "\n".join(text for _, text in PAGES)


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_the_two_commands_come_first_and_ci_runs_the_test_command() -> None:
    blocks = shell_blocks(README)
    assert "notifyd dev" in blocks[0]
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_the_settings_table_and_the_example_file_are_the_declarations() -> None:
    """The README's settings table and systemd/notifyd.toml are what the declarations in
    notifyd/core/settings.py generate, exactly; and the example file loads."""
    table = re.search(
        r"^\| variable \|.*?\n(?!\|)", (DOCS / "configuration.md").read_text(), re.M | re.S
    )
    assert table is not None, "docs/configuration.md has no settings table"
    assert table.group(0) == settings_docs.markdown_table(), (
        "docs/configuration.md's settings table differs from the declarations: replace it "
        "with the output of `python -m notifyd.core.settings_docs --markdown`"
    )
    example_file = ROOT / "systemd" / "notifyd.toml"
    assert example_file.read_text() == settings_docs.toml_example(), (
        "systemd/notifyd.toml differs from the declarations: regenerate it with "
        "`python -m notifyd.core.settings_docs --toml > systemd/notifyd.toml`"
    )
    example = config.load(environ={}, config_file=example_file)
    assert example.retention_days == 90 and example.dsn is not None


async def test_readme_sql_examples_run(daemon: Daemon) -> None:
    """Every SQL block runs; the grants of "Database roles" (given to a role of this test's
    own) are all an app's role needs to notify, mark read, archive, count and delete."""
    blocks = re.findall(r"```sql\n(.*?)```", EVERYTHING, re.S)
    assert len(blocks) >= 6
    pool = await daemon.pool()
    role = f"notifyd_app_{os.getpid()}_{time.monotonic_ns()}"
    await pool.execute(f"CREATE ROLE {role}")
    try:
        await pool.execute(
            "CREATE TABLE appointments (id serial, doctor_id text, patient_name text)"
        )
        grants = [b for b in blocks if b.startswith("GRANT")]
        assert len(grants) == 1
        for block in blocks:
            await pool.execute(
                block.replace("WHERE id = 123", "WHERE id = 1").replace(" TO app;", f" TO {role};")
            )
        await pool.execute("INSERT INTO appointments (doctor_id, patient_name) VALUES ('7', 'Ann')")
        assert (
            await daemon.sql("SELECT count(*) FROM notifyd.notifications WHERE user_id = '7'") == 1
        )

        client = await daemon.connect("app-user")
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            nid = await conn.fetchval(
                "SELECT notifyd.notify('app-user', 't', 'from the app role', 'm')"
            )
            await conn.execute(
                "INSERT INTO notifyd.notifications (user_id, type) "
                "VALUES ('app-user', 'plain insert')"
            )
            await conn.execute("SELECT notifyd.notify_role('admin', 't', 'r', 'm')")
            await conn.execute("SELECT notifyd.broadcast('t', 'b', 'm')")
        assert (await client.next_data("notification:new"))["notification"]["id"] == nid
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            await conn.execute(
                "UPDATE notifyd.notifications SET read_at = now() WHERE id = $1", nid
            )
            await conn.execute("SELECT notifyd.archive('app-user', $1::bigint[])", [nid])
            acted = await conn.fetchval(
                "SELECT notifyd.notify('app-user', 't', 'act', 'm', "
                'actions => \'[{"id": "ok", "label": "OK"}]\')'
            )
            await conn.execute("SELECT notifyd.act('app-user', $1, 'ok')", acted)
            assert (
                await conn.fetchval("SELECT action FROM notifyd.interactions WHERE id = $1", acted)
                == "ok"
            )
            page = await conn.fetch(
                "SELECT id FROM notifyd.feed('user:app-user', ARRAY['user:app-user', 'all'])"
            )
            assert acted in [r["id"] for r in page]
            counts = await conn.fetch(
                "SELECT * FROM notifyd.counts('user:app-user', ARRAY['user:app-user', 'all'])"
            )
            assert counts
            for call in ("notifyd.to_wire(n)", "notifyd.to_wire(n, 'user:app-user')"):
                wire = await conn.fetchval(
                    f"SELECT {call}::text FROM notifyd.notifications n WHERE id = $1", nid
                )
                assert orjson.loads(wire)["id"] == nid
            await conn.execute("DELETE FROM notifyd.notifications WHERE id = $1", nid)
        updated = (await client.next_data("notification:updated"))["notification"]
        assert (updated["id"], updated["read"]) == (nid, True)
        archived = (await client.next_data("notification:updated"))["notification"]
        assert (archived["id"], archived["archived"]) == (nid, True)
        took = (await client.next_data("notification:updated"))["notification"]
        while took["action"] is None:  # read first, then the action
            took = (await client.next_data("notification:updated"))["notification"]
        assert (took["id"], took["action"], took["read"]) == (acted, "ok", True)
        assert (await client.next_data("notification:deleted"))["id"] == nid
    finally:
        await pool.execute(f"DROP OWNED BY {role}")
        await pool.execute(f"DROP ROLE {role}")


def test_every_image_and_file_the_pages_link_to_exists() -> None:
    linked = [
        (page.parent / target.split("#")[0]).resolve()
        for page, text in PAGES
        for target in re.findall(r"\]\(((?!https?:|#)[^)\s]+)\)", text)
    ]
    assert (ROOT / "bench/figures/latency-cdf.png").resolve() in linked  # the plots are shown
    assert (ROOT / "bench/figures/memory-per-connection.png").resolve() in linked
    missing = [str(t) for t in linked if not t.exists()]
    assert not missing, missing
    for image in (t for t in linked if t.suffix == ".png"):
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """mkdocs.yml is strict (broken links and anchors are warnings, and fail the build), and
    every page of docs/ is in its nav."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f" {page.name}" in nav for page in DOCS.glob("*.md")), nav
    assert (tmp_path / "browser" / "index.html").exists()


def test_the_pages_json_lines_parse() -> None:
    for block in re.findall(r"```json\n(.*?)```", EVERYTHING, re.S):
        for line in block.splitlines():
            if line.strip():
                json.loads(line)


async def test_every_metric_is_in_the_operations_page(daemon: Daemon) -> None:
    """The metrics table names every family /metrics serves (process_* as a group)."""
    _, body = await http_get(daemon.app.port, "/metrics")
    families = re.findall(r"^# TYPE (\S+) ", body.decode(), re.M)
    assert "notifyd_delivery_latency_seconds" in families
    for name in families:
        # prometheus-client adds a `<family>_created` timestamp beside each counter/histogram
        name = name.removesuffix("_created")
        shown = "process_*" if name.startswith("process_") else name
        assert f"`{shown}" in (DOCS / "operations.md").read_text(), name
