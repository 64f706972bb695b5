# The demo page and the browser client (/notifyd.js) in a real Chromium driven by Playwright:
# a row inserted in PostgreSQL appears; two tabs of one user stay in step; the page catches up
# after the daemon restarts; with WebSockets blocked it polls, and it goes back to the WebSocket
# when it can. The client's pure parts (backoff, dedupe) are checked in the page too.
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    WebSocketRoute,
    async_playwright,
    expect,
)
from support import Daemon, free_port, running_daemon

from notifyd.devserver import banner

TIMEOUT_MS = 15_000
SCREENSHOT = os.environ.get("NOTIFYD_SCREENSHOT")  # where to save the README's picture


def chromium_path() -> str:
    """NOTIFYD_TEST_CHROMIUM, Debian's /usr/bin/chromium, or Playwright's own (downloaded once
    if missing); otherwise the tests fail saying how to provide one."""
    given = os.environ.get("NOTIFYD_TEST_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    subprocess.run(
        [sys.executable, "-m", "playwright", "install", "chromium"],
        capture_output=True,
        timeout=600,
        check=False,
    )
    return ""  # Playwright's own, if the download worked


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    async with async_playwright() as p:
        try:
            b = await p.chromium.launch(executable_path=path or None)
        except Exception as exc:
            pytest.fail(
                "no Chromium for the browser tests: install it (apt-get install chromium),"
                " or run `.venv/bin/playwright install chromium`, or set "
                f"NOTIFYD_TEST_CHROMIUM to a Chromium binary ({exc!s:.200})"
            )
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def dev_daemon(fresh_db: str) -> AsyncIterator[Daemon]:
    async with running_daemon(fresh_db, dev=True) as d:
        yield d


def demo_url(d: Daemon, query: str) -> str:
    """The demo page as the banner links it: with the run's key, which its helpers need."""
    assert d.app.http_api.dev is not None
    return f"{d.http}/?{query}#key={d.app.http_api.dev.key}"


# The uncaught script errors of each page opened by open_demo.
PAGE_ERRORS: dict[Page, list[str]] = {}


async def open_demo(
    browser: Browser, d: Daemon, user: str, context: BrowserContext | None = None
) -> Page:
    ctx = context or await browser.new_context()
    page = await ctx.new_page()
    errors = PAGE_ERRORS.setdefault(page, [])
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(demo_url(d, f"user={user}&poll=300"))
    await expect(page.locator("#state")).to_have_text("open", timeout=TIMEOUT_MS)
    return page


def items(page: Page) -> Locator:
    """The items of the demo's inline <notifyd-inbox>."""
    return page.locator("main notifyd-inbox li[data-id]")


def badge(page: Page) -> Locator:
    return page.locator("notifyd-bell [part=badge]")


async def test_a_row_inserted_in_postgresql_appears_in_the_page(
    browser: Browser, dev_daemon: Daemon
) -> None:
    d = dev_daemon
    await d.notify("ann", "before the page opened")
    page = await open_demo(browser, d, "ann")
    await expect(items(page)).to_have_count(1, timeout=TIMEOUT_MS)  # replayed by the sync
    await d.sql(
        "INSERT INTO notifyd.notifications (user_id, type, title, message, priority) "
        "VALUES ('ann', 'demo', 'From SQL', 'an INSERT', 'high')"
    )
    await expect(items(page)).to_have_count(2, timeout=TIMEOUT_MS)
    await expect(items(page).first).to_contain_text("From SQL")
    await expect(items(page).first).to_have_class(re.compile(r"\bhigh\b"))  # its priority
    await expect(badge(page)).to_have_text("2")
    await expect(page.locator("notifyd-bell [part=toast]")).to_contain_text("From SQL")
    # the dev form sends one to another user: not shown here
    await page.fill("form#send input[name=user]", "someone-else")
    await page.click("form#send button")
    await d.notify("ann", "after the form")
    await expect(items(page)).to_have_count(3, timeout=TIMEOUT_MS)
    assert "someone-else" not in await page.inner_text("main notifyd-inbox")
    if SCREENSHOT:
        await page.set_viewport_size({"width": 1000, "height": 520})
        await page.wait_for_timeout(300)
        await page.screenshot(path=SCREENSHOT)
    assert not PAGE_ERRORS[page]


async def test_the_banners_link_and_insert_meet_in_the_page(
    browser: Browser, dev_daemon: Daemon
) -> None:
    """The page opened by the banner's link (no ?user) is user 42's, whose INSERT the banner
    prints: pasted into psql, it shows up there."""
    d = dev_daemon
    assert d.app.http_api.dev is not None
    text = banner("postgresql://x", Path("psql"), "s" * 40, "127.0.0.1", 1, "k", Path("d"))
    insert = re.search(r' -c "(INSERT .*)"$', text, re.M)
    assert insert, text
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{d.http}/#key={d.app.http_api.dev.key}")
    await expect(page.locator("#state")).to_have_text("open", timeout=TIMEOUT_MS)
    await expect(page.locator("#who")).to_have_text("as 42")
    await d.sql(insert.group(1))
    await expect(items(page)).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(items(page).first).to_contain_text("It works")


FEED_SHOTS = os.environ.get("NOTIFYD_FEED_SCREENSHOTS")  # a folder for the feed's pictures


async def test_the_demo_shows_groups_seen_archive_categories_and_actions(
    browser: Browser, dev_daemon: Daemon
) -> None:
    d = dev_daemon
    page = await open_demo(browser, d, "gina")
    for actor in ("Dr. Lee", "Dr. Kim"):
        await d.sql(
            "SELECT notifyd.notify('gina', 'appointment', 'Ana Díaz: new appointment', "
            "'Mon 10:00', category => 'appointments', group_key => 'patient:7', actor => $1)",
            actor,
        )
    await d.sql(
        "SELECT notifyd.notify('gina', 'invoice', 'Invoice due', 'April: 120 EUR', "
        "category => 'billing', actions => $1::jsonb)",
        '[{"id": "pay", "label": "Pay now"}, {"id": "later", "label": "Later"}]',
    )
    await d.sql(
        "SELECT notifyd.notify('gina', 't', $1, 'a title with no place to break')", "W" * 120
    )
    await expect(items(page)).to_have_count(3, timeout=TIMEOUT_MS)
    grouped = items(page).filter(has_text="Ana Díaz")
    await expect(grouped).to_contain_text("Dr. Kim and 1 other")
    await expect(badge(page)).to_have_text("3")  # unseen
    await expect(page.locator("main notifyd-inbox li.unseen")).to_have_count(3)
    # opening the bell sees them; they stay unread
    await page.get_by_role("button", name="Notifications, 3 new").click()
    await expect(badge(page)).to_be_hidden(timeout=TIMEOUT_MS)
    await expect(page.locator("main notifyd-inbox li.unseen")).to_have_count(0)
    await expect(page.locator("main notifyd-inbox li.unread")).to_have_count(3)
    await page.keyboard.press("Escape")
    # an action: taken, recorded, and the item read
    invoice = items(page).filter(has_text="Invoice due")
    await invoice.get_by_role("button", name="Pay now").click()
    await expect(invoice).to_contain_text("✓ Pay now", timeout=TIMEOUT_MS)
    await expect(page.locator("main notifyd-inbox li.unread")).to_have_count(2)
    assert await d.sql("SELECT action FROM notifyd.interactions") == "pay"
    if FEED_SHOTS:
        await page.set_viewport_size({"width": 1100, "height": 760})
        await page.wait_for_timeout(300)
        await page.screenshot(path=f"{FEED_SHOTS}/demo-desktop.png")
        await page.set_viewport_size({"width": 360, "height": 900})
        await page.wait_for_timeout(300)
        await page.screenshot(path=f"{FEED_SHOTS}/demo-phone.png", full_page=True)
        await page.emulate_media(color_scheme="dark")
        await page.set_viewport_size({"width": 1100, "height": 760})
        await page.wait_for_timeout(300)
        await page.screenshot(path=f"{FEED_SHOTS}/demo-dark.png")
        await page.emulate_media(color_scheme="light")
    # a category's tab, then the others
    await page.get_by_role("tab", name="billing").click()
    await expect(items(page)).to_have_count(1, timeout=TIMEOUT_MS)
    await page.get_by_role("tab", name="All").click()
    await grouped.get_by_role("button", name="More actions: Ana Díaz: new appointment").click()
    await page.get_by_role("menuitem", name="Archive").click()
    await expect(items(page)).to_have_count(2, timeout=TIMEOUT_MS)
    await page.get_by_role("tab", name="Archived").click()
    await expect(items(page)).to_have_count(1, timeout=TIMEOUT_MS)
    await page.get_by_role("tab", name="Unread 1").click()
    await expect(items(page)).to_have_count(1, timeout=TIMEOUT_MS)  # the long one
    await page.get_by_role("tab", name="All").click()
    # a long unbroken title stays in its card
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= await page.evaluate("window.innerWidth")
    # the send form says what happened
    await page.fill("form#send input[name=group]", "patient:9")
    await page.click("form#send button")
    await expect(page.locator("#sent")).to_contain_text("Sent #", timeout=TIMEOUT_MS)
    # a long title's toast: three lines at most, none showing below the clamp
    await page.fill("form#send input[name=title]", "T" * 400)
    await page.fill("form#send input[name=group]", "")  # a new item, not a group's update
    await page.click("form#send button")
    toast = page.locator("notifyd-bell [part=toast]").last
    await expect(toast).to_contain_text("TTTT", timeout=TIMEOUT_MS)
    for wide, high in ((360, 800), (1100, 760)):
        await page.set_viewport_size({"width": wide, "height": high})
        assert await page.evaluate("document.documentElement.scrollWidth") <= wide, wide
        shape = await toast.evaluate(
            """(box) => {
                const text = box.querySelector("b");
                const line = parseFloat(getComputedStyle(text).lineHeight);
                const outer = box.getBoundingClientRect(), shown = text.getBoundingClientRect();
                return { lines: shown.height / line, inside: shown.bottom <= outer.bottom,
                         cut: text.scrollHeight > text.clientHeight,
                         left: outer.left, right: outer.right };
            }"""
        )
        assert round(shape["lines"]) == 2 and shape["inside"] and shape["cut"], shape
        assert shape["left"] >= 0 and shape["right"] <= wide, shape
    assert not PAGE_ERRORS[page]


async def test_reading_in_one_tab_clears_the_badge_in_the_other(
    browser: Browser, dev_daemon: Daemon
) -> None:
    d = dev_daemon
    for i in range(2):
        await d.notify("bea", f"n{i}")
    context = await browser.new_context()  # one browser profile: two tabs share storage
    one = await open_demo(browser, d, "bea", context)
    two = await open_demo(browser, d, "bea", context)
    for page in (one, two):
        await expect(badge(page)).to_have_text("2", timeout=TIMEOUT_MS)
    await one.locator("main notifyd-inbox li.unread").first.click()
    for page in (one, two):
        await expect(badge(page)).to_have_text("1", timeout=TIMEOUT_MS)
        await expect(page.locator("main notifyd-inbox li.unread")).to_have_count(1)
    await two.locator("main notifyd-inbox").get_by_role("button", name="Mark all as read").click()
    for page in (one, two):
        await expect(badge(page)).to_be_hidden(timeout=TIMEOUT_MS)
        await expect(page.locator("main notifyd-inbox li.unread")).to_have_count(0)
    await context.close()


async def test_the_page_catches_up_after_the_daemon_restarts(
    browser: Browser, fresh_db: str
) -> None:
    port = free_port()
    async with running_daemon(fresh_db, dev=True, port=port) as d:
        page = await open_demo(browser, d, "cat")
        await d.notify("cat", "live")
        await expect(items(page)).to_have_count(1, timeout=TIMEOUT_MS)
    # the daemon is gone: the page says so, and rows keep being committed
    await expect(page.locator("#state")).not_to_have_text("open", timeout=TIMEOUT_MS)
    async with running_daemon(fresh_db, dev=True, port=port) as d:
        for i in range(3):
            await d.notify("cat", f"missed {i}")
        await expect(page.locator("#state")).to_have_text("open", timeout=30_000)
        await expect(items(page)).to_have_count(4, timeout=TIMEOUT_MS)
        await d.notify("cat", "live again")
        await expect(items(page)).to_have_count(5, timeout=TIMEOUT_MS)
        titles = await items(page).locator("[part=item-title]").all_inner_texts()
        assert sorted(titles) == ["live", "live again", "missed 0", "missed 1", "missed 2"]
        assert not PAGE_ERRORS[page]


async def test_with_websockets_blocked_polling_delivers_and_websocket_returns(
    browser: Browser, dev_daemon: Daemon
) -> None:
    d = dev_daemon
    context = await browser.new_context()
    blocked = True

    async def block(ws: WebSocketRoute) -> None:
        if blocked:
            await ws.close()  # like a proxy that drops upgrades
        else:
            ws.connect_to_server()

    await context.route_web_socket("**/ws*", block)
    page = await context.new_page()
    await page.goto(demo_url(d, "user=dan&poll=300"))
    await expect(page.locator("#state")).to_have_text("polling", timeout=TIMEOUT_MS)
    await d.notify("dan", "by polling")
    await expect(items(page)).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(badge(page)).to_have_text("1", timeout=TIMEOUT_MS)
    await page.locator("main notifyd-inbox li.unread").first.click()  # mark-read over HTTP
    await expect(badge(page)).to_be_hidden(timeout=TIMEOUT_MS)
    assert await d.sql("SELECT count(*) FROM notifyd.notifications WHERE read_at IS NULL") == 0
    blocked = False
    await expect(page.locator("#state")).to_have_text("open", timeout=40_000)
    await d.notify("dan", "live again")
    await expect(items(page)).to_have_count(2, timeout=TIMEOUT_MS)
    await context.close()


async def test_the_demo_page_without_its_key_says_where_to_get_it(
    browser: Browser, dev_daemon: Daemon
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{dev_daemon.http}/?user=eve")
    await expect(page.locator("#notice")).to_contain_text("#key=", timeout=TIMEOUT_MS)
    await expect(page.locator("#state")).not_to_have_text("open")
    wrong = await context.new_page()
    await wrong.goto(demo_url(dev_daemon, "user=eve").replace("#key=", "#key=wrong"))
    await expect(wrong.locator("#notice")).to_contain_text("X-Notifyd-Dev-Key", timeout=TIMEOUT_MS)
    await context.close()


async def test_client_backoff_and_dedupe_in_the_browser(
    browser: Browser, dev_daemon: Daemon
) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{dev_daemon.http}/notifyd.js")  # same origin for the import
    result = await page.evaluate("""async () => {
        const m = await import("/notifyd.js");
        const delays = [0, 1, 2, 3, 10, 40].map((a) => [
            m.backoffDelay(a, { base: 500, max: 30000 }, () => 0),
            m.backoffDelay(a, { base: 500, max: 30000 }, () => 0.999999)]);
        const ledger = new m.Ledger(null, "k", 3);
        const n = (seq) => ({ stream: "user:1", seq });
        const admitted = [1, 2, 1, 3, 2, 4, 1].map((s) => ledger.admit(n(s)));
        ledger.advance({ "user:1": 4 }); ledger.advance({ "user:1": 2 });
        return { delays, admitted, cursor: ledger.cursors["user:1"] };
    }""")
    lo_hi = result["delays"]
    assert lo_hi[0] == [250, pytest.approx(500, abs=0.01)]
    assert [lo for lo, _ in lo_hi] == [250, 500, 1000, 2000, 15000, 15000]  # doubles, capped
    assert all(lo <= hi <= 2 * lo + 0.01 for lo, hi in lo_hi)  # the jitter stays in range
    # each (stream, seq) once; only the last `remember` (3) keys are remembered
    assert result["admitted"] == [True, True, False, True, False, True, True]
    assert result["cursor"] == 4  # cursors never move back


async def test_a_patient_page_sees_whether_doctors_are_online(
    browser: Browser, fresh_db: str
) -> None:
    async with running_daemon(fresh_db, dev=True, presence_public_roles=("doctor",)) as d:
        doctor = await d.connect("dr-lee", ["doctor"])
        await d.connect("other-patient", ["patient"])
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{d.http}/notifyd.js")  # same origin as the daemon
        result = await page.evaluate(
            """async (token) => {
            const m = await import("/notifyd.js");
            const client = new m.NotifydClient({ token, storage: null });
            const open = new Promise((ok) => client.on("state", (s) => s === "open" && ok()));
            client.start();
            await open;
            const users = await client.queryPresence(["dr-lee", "other-patient"]);
            const counts = await client.countOnline(["doctor"]);
            const refused = await client.countOnline(["patient"]).then(() => null, (e) => e.code);
            client.stop();
            return { users, counts, refused };
        }""",
            d.token("pat", ["patient"]),
        )
        users = {u["userId"]: u for u in result["users"]}
        assert users["dr-lee"]["online"] is True
        assert users["other-patient"] == {
            "userId": "other-patient",
            "online": False,
            "lastSeen": None,
        }
        assert result["counts"] == {"doctor": 1}
        assert result["refused"] == "forbidden"
        await doctor.close()


async def test_the_client_follows_a_refresh_that_changes_the_roles(
    browser: Browser, dev_daemon: Daemon
) -> None:
    """auth:refreshed carries the new roles: the client drops the streams lost (a `reset`)
    and syncs those gained, whose earlier items it then has."""
    d = dev_daemon
    await d.sql("SELECT notifyd.notify_role('sre', 't', 'before the refresh', 'm')")
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{d.http}/notifyd.js")  # same origin as the daemon
    result = await page.evaluate(
        """async ([first, fresh]) => {
        const m = await import("/notifyd.js");
        const client = new m.NotifydClient({ token: first, storage: null });
        const seen = { resets: [], titles: [] };
        client.on("reset", (stream) => seen.resets.push(stream));
        const open = new Promise((ok) => client.on("state", (s) => s === "open" && ok()));
        const gained = new Promise((ok) => client.on("notification", (n) => {
            seen.titles.push(n.title);
            if (n.stream === "role:sre") ok();
        }));
        client.start();
        await open;
        while (!client.synced) await new Promise((ok) => setTimeout(ok, 20));
        await client.request("auth", { token: fresh });
        await gained;
        seen.roles = client.roles;
        client.stop();
        return seen;
    }""",
        [d.token("ref", ["ops"]), d.token("ref", ["sre"])],
    )
    assert result == {"resets": ["role:ops"], "titles": ["before the refresh"], "roles": ["sre"]}
