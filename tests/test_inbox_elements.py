# The inbox's custom elements (<notifyd-bell>, <notifyd-inbox> in /notifyd.js) in a real
# Chromium, on a page of the daemon's origin, with rows inserted in PostgreSQL: the badge, the
# popover and its focus, pages loaded as the list scrolls, tabs and their counts, the menu of an
# item, a click that reads and follows, groups and actions, strings replaced, toasts, and the
# layout at phone width, in dark mode and with long unbroken text.
from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar, Literal

import pytest
from playwright.async_api import Browser, Error, Page, expect
from support import Daemon, running_daemon
from test_browser import PAGE_ERRORS, TIMEOUT_MS, browser

__all__ = ["browser"]  # the session's Chromium (a fixture of test_browser)

SHOTS = os.environ.get("NOTIFYD_INBOX_SCREENSHOTS")  # a folder for the docs' pictures


@pytest.fixture
async def daemon(fresh_db: str) -> AsyncIterator[Daemon]:
    async with running_daemon(fresh_db) as d:
        yield d


class AppPages(http.server.BaseHTTPRequestHandler):
    """The app's own web server, on another origin than the daemon's (as in production): it
    serves the page set for each path, and a plain page for any other."""

    pages: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        body = self.pages.get(self.path, "<!doctype html><title>app</title><p>app page</p>")
        data = body.encode()
        kind = "text/javascript" if self.path.endswith(".js") else "text/html"
        self.send_response(200)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app_origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AppPages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { margin: 0; font-family: system-ui, sans-serif; }
  header { display: flex; align-items: center; justify-content: space-between; padding: .6rem 1rem;
           border-bottom: 1px solid #ddd; }
  @media (prefers-color-scheme: dark) { body { background: #12151c; color: #e6e9f0; }
                                        header { border-color: #2a3040; } }
</style></head>
<body>
<header><b>Acme clinic</b> <notifyd-bell %(bell)s></notifyd-bell></header>
<main><p>Your appointments.</p></main>
<script type="module">
import { NotifydClient } from "%(notifyd)s/notifyd.js";
const client = new NotifydClient({ url: "%(notifyd)s", token: %(token)s, storage: null });
const bell = document.querySelector("notifyd-bell");
%(setup)s
bell.client = client;
client.start();
window.notifyd = client;
window.opened = [];
document.addEventListener("notifyd:open", (e) => {
  window.opened.push(e.detail.url);
  if (window.stayHere) e.preventDefault();
});
</script>
</body></html>
"""


async def open_page(
    browser: Browser, d: Daemon, app: str, user: str, bell: str = "", setup: str = ""
) -> Page:
    """The app's page (on its own origin) with a bell for `user`, fed by the daemon."""
    page = await (await browser.new_context()).new_page()
    errors = PAGE_ERRORS.setdefault(page, [])
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    path = f"/{user}.html"
    AppPages.pages[path] = PAGE % {
        "bell": bell,
        "token": f'"{d.token(user)}"',
        "setup": setup,
        "notifyd": d.http,
    }
    await page.goto(app + path)
    await page.wait_for_function("window.notifyd && window.notifyd.state === 'open'")
    return page


def errors_into(errors: list[str]) -> Callable[[Error], None]:
    """A pageerror handler that keeps the page's uncaught errors in `errors`."""
    return lambda exc: errors.append(str(exc))


async def counts_of(d: Daemon, user: str) -> dict[str, Any]:
    """The counts a new connection of `user` is sent."""
    client = await d.raw(f"?token={d.token(user)}")
    await client.next_data("connection-confirmed")
    counts: dict[str, Any] = await client.next_data("notification:unread-count")
    await client.close()
    return counts


async def read_soon(d: Daemon, title: str, by: str) -> None:
    """Wait until the item titled `title` is read in the table: a click reads it through the
    server, after the test's next step may have begun."""
    for _ in range(200):
        read = "SELECT read_at IS NOT NULL FROM notifyd.notifications WHERE title = $1"
        if await d.sql(read, title):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{by} did not read its item")


def inbox_items(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("notifyd-bell notifyd-inbox li[data-id]")


async def insert(d: Daemon, user: str, title: str, **columns: object) -> int:
    columns.setdefault("message", "message")
    names = ["user_id", "type", "title", *columns]
    values = [user, "test", title, *columns.values()]
    casts = {"actions": "::jsonb"}
    marks = ", ".join(f"${i + 1}{casts.get(name, '')}" for i, name in enumerate(names))
    nid: int = await d.sql(
        f"INSERT INTO notifyd.notifications ({', '.join(names)}) VALUES ({marks}) RETURNING id",
        *values,
    )
    return nid


async def test_the_bell_counts_unseen_opens_the_inbox_and_pages_as_it_scrolls(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    d = daemon
    for i in range(45):
        await d.notify("ann", f"item {i}")
    page = await open_page(browser, d, app_origin, "ann")
    button = page.get_by_role("button", name="Notifications, 45 new")
    await expect(button).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page.locator("notifyd-bell").locator("[part=badge]")).to_have_text("45")
    await button.click()
    dialog = page.get_by_role("dialog", name="Notifications")
    await expect(dialog).to_be_visible()
    # opening saw them all: the badge goes, they stay unread
    await expect(page.get_by_role("button", name="Notifications", exact=True)).to_be_visible(
        timeout=TIMEOUT_MS
    )
    await expect(page.get_by_role("tab", name="Unread 45")).to_be_visible()
    await expect(inbox_items(page)).to_have_count(20, timeout=TIMEOUT_MS)
    await expect(inbox_items(page).first).to_contain_text("item 44")  # newest first
    for shown in (40, 45):
        await inbox_items(page).last.scroll_into_view_if_needed()
        await expect(inbox_items(page)).to_have_count(shown, timeout=TIMEOUT_MS)
    await expect(inbox_items(page).last).to_contain_text("item 0")
    assert (await counts_of(d, "ann"))["unseen"] == 0  # for every device, as a fresh one sees
    # the focus starts on the selected tab, stays in the dialog, and Escape gives it back
    await expect(page.get_by_role("tab", name="All")).to_be_focused()
    in_inbox = "document.querySelector('notifyd-bell').shadowRoot.activeElement?.localName"
    for key in ("Shift+Tab", "Shift+Tab", "Shift+Tab", "Tab", "Tab"):  # round the first one
        await page.keyboard.press(key)
        assert await page.evaluate(in_inbox) == "notifyd-inbox", key
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="Notifications", exact=True)).to_be_focused()
    # a live arrival, the popover closed: announced by the bell (twice for the same title)
    said = (
        "[...document.querySelector('notifyd-bell').shadowRoot.children]"
        ".find((e) => e.getAttribute('aria-live') === 'polite')"
    )
    for _ in range(2):
        await d.notify("ann", "a live one")
        await page.wait_for_function(f"{said}.textContent === 'New notification: a live one'")
        await page.evaluate(f"{said}.textContent = 'heard'")
    # and listed at the top when it opens, the focus on its tabs
    await page.get_by_role("button", name="Notifications, 2 new").click()
    await expect(inbox_items(page).first).to_contain_text("a live one", timeout=TIMEOUT_MS)
    await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Unread 47")).to_be_focused()
    await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Archived")).to_be_focused()
    await expect(page.get_by_role("tab", name="Archived")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(page.get_by_role("tabpanel", name="Archived")).to_be_visible()
    await expect(page.get_by_role("button", name="Mark all as read")).to_be_hidden()
    assert not PAGE_ERRORS[page]


async def test_an_item_click_reads_it_and_follows_only_a_web_link(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    d = daemon
    await insert(d, "bo", "to the page", action_url="/visits/7?from=inbox")
    await insert(d, "bo", "a script link", action_url="javascript:alert(1)")
    # paths that a browser would take to another host
    for i, url in enumerate(("//evil.example/x", "/\\evil.example", "/\t/evil.example")):
        await insert(d, "bo", f"another host {i}", action_url=url)
    page = await open_page(browser, d, app_origin, "bo")
    await page.get_by_role("button", name="Notifications, 5 new").click()
    await expect(inbox_items(page)).to_have_count(5, timeout=TIMEOUT_MS)
    for title in ("a script link", "another host 0", "another host 1", "another host 2"):
        await inbox_items(page).filter(has_text=title).click()
    await expect(page.get_by_role("tab", name="Unread 1")).to_be_visible(timeout=TIMEOUT_MS)
    assert await page.evaluate("window.opened") == [None] * 4  # read, not followed
    async with page.expect_navigation():
        await inbox_items(page).filter(has_text="to the page").click()
    assert page.url == f"{app_origin}/visits/7?from=inbox"
    read = await d.sql("SELECT count(*) FROM notifyd.notifications WHERE read_at IS NOT NULL")
    assert read == 5


async def test_an_action_is_recorded_then_its_link_followed(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    d = daemon
    pay = '[{"id": "pay", "label": "Pay now", "url": "/billing/pay"}, {"id": "no", "label": "No"}]'
    nid = await insert(d, "ed", "Invoice due", actions=pay)
    page = await open_page(browser, d, app_origin, "ed")
    await page.get_by_role("button", name="Notifications, 1 new").click()
    async with page.expect_navigation():
        await page.get_by_role("button", name="Pay now").click()
    assert page.url == f"{app_origin}/billing/pay"
    row = "SELECT action || ':' || (read_at IS NOT NULL) FROM notifyd.notifications WHERE id = $1"
    assert await d.sql(row, nid) == "pay:true"


async def test_the_menu_reads_archives_and_snoozes_and_the_tabs_follow(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    d = daemon
    for title in ("keep", "archive me", "snooze me", "read me"):
        await insert(d, "cy", title, category="billing" if title == "keep" else None)
    page = await open_page(browser, d, app_origin, "cy", bell='categories="billing"')
    await page.get_by_role("button", name="Notifications, 4 new").click()
    await expect(inbox_items(page)).to_have_count(4, timeout=TIMEOUT_MS)
    await expect(page.get_by_role("tab", name="billing 1")).to_be_visible()
    # Tab: the selected tab, the list's current row and its menu button, then round again;
    # arrow keys choose the current row
    focused = (
        "(() => { const e = document.querySelector('notifyd-bell').inbox.shadowRoot"
        ".activeElement; return e.localName + ':' + (e.getAttribute('aria-label')"
        " || e.querySelector('[part=item-title]')?.textContent || e.textContent); })()"
    )
    await expect(page.get_by_role("tab", name="All")).to_be_focused()
    stops = []
    for key in ("Tab", "Tab", "Tab", "Tab", "ArrowDown", "Tab"):
        await page.keyboard.press(key)
        stops.append(await page.evaluate(focused))
    assert stops == [
        "li:read me",
        "button:More actions: read me",
        "button:Mark all as read",
        "button:All",
        "button:All",  # (arrows on the tabs choose a tab: this one stays)
        "li:read me",
    ], stops
    await page.keyboard.press("ArrowDown")
    assert await page.evaluate(focused) == "li:snooze me"
    await page.keyboard.press("Tab")
    assert await page.evaluate(focused) == "button:More actions: snooze me"
    await page.get_by_role("tab", name="All").click()

    async def menu(title: str, choice: str) -> None:
        await page.get_by_role("button", name=f"More actions: {title}").click()
        await page.get_by_role("menuitem", name=choice).click()

    await menu("archive me", "Archive")
    await menu("snooze me", "Snooze for 1 hour")
    await menu("read me", "Mark as read")
    await expect(inbox_items(page)).to_have_count(2, timeout=TIMEOUT_MS)
    await expect(page.get_by_role("tab", name="Unread 1")).to_be_visible(timeout=TIMEOUT_MS)
    await page.get_by_role("tab", name="Unread 1").click()
    await expect(inbox_items(page)).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(inbox_items(page)).to_contain_text("keep")
    await page.get_by_role("tab", name="Archived").click()
    await expect(inbox_items(page)).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(inbox_items(page)).to_contain_text("archive me")
    await menu("archive me", "Unarchive")
    await expect(page.locator("notifyd-bell notifyd-inbox [part=status]")).to_have_text(
        "Nothing archived", timeout=TIMEOUT_MS
    )
    await page.get_by_role("tab", name="billing 1").click()
    await expect(inbox_items(page)).to_have_count(1, timeout=TIMEOUT_MS)
    # the keyboard: arrows move through the tabs; the menu opens and closes on its button
    await page.keyboard.press("ArrowLeft")
    await expect(page.get_by_role("tab", name="Archived")).to_have_attribute(
        "aria-selected", "true"
    )
    await page.get_by_role("tab", name="All").click()
    await page.get_by_role("button", name="More actions: keep").press("Enter")
    await expect(page.get_by_role("menuitem", name="Mark as read")).to_be_focused()
    # a change of the item meanwhile (here by SQL) redraws it, and leaves the menu as it was
    await d.sql("UPDATE notifyd.notifications SET message = 'changed' WHERE title = 'keep'")
    await expect(inbox_items(page).filter(has_text="keep")).to_contain_text(
        "changed", timeout=TIMEOUT_MS
    )
    await expect(page.get_by_role("menuitem", name="Mark as read")).to_be_focused()
    await page.keyboard.press("ArrowDown")
    await expect(page.get_by_role("menuitem", name="Archive")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.get_by_role("button", name="More actions: keep")).to_be_focused()
    await expect(page.get_by_role("dialog")).to_be_visible()  # Escape closed the menu only
    states = await d.sql(
        "SELECT string_agg(title || ':' || (read_at IS NOT NULL) || ':'"
        " || (archived_at IS NOT NULL) || ':' || (snoozed_until IS NOT NULL), ',' ORDER BY id)"
        " FROM notifyd.notifications"
    )
    assert states == (
        "keep:false:false:false,archive me:false:false:false,"
        "snooze me:false:false:true,read me:true:false:false"
    )
    await page.get_by_role("button", name="Mark all as read").click()
    await expect(page.get_by_role("tab", name="Unread")).to_have_text("Unread", timeout=TIMEOUT_MS)
    assert (await counts_of(d, "cy"))["count"] == 0
    assert not PAGE_ERRORS[page]


async def test_groups_actions_strings_toasts_and_the_layout(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    d = daemon
    for actor in ("Dr. Lee", "Dr. Kim", "Ana"):
        await insert(d, "di", "New appointments", group_key="patient:7", actor=actor)
    actions = '[{"id": "confirm", "label": "Confirm"}, {"id": "decline", "label": "Decline"}]'
    nid = await insert(d, "di", "Confirm Monday 10:00?", actions=actions)
    await insert(d, "di", "W" * 300, category="system")
    long = json.dumps([{"id": "a", "label": "L" * 100}, {"id": "b", "label": "M" * 100}])
    await insert(d, "di", "Long labels", actions=long)
    strings = """bell.setAttribute("lang", "en_US");  // not a language tag: the default then
    bell.strings = { title: "Mitteilungen", markAllRead: "Alle gelesen",
        tabs: { all: "Alle", unread: "Ungelesen", archived: "Archiv" },
        bell: (n) => n ? `Mitteilungen, ${n} neu` : "Mitteilungen" };"""
    page = await open_page(browser, d, app_origin, "di", bell="toasts", setup=strings)
    await page.get_by_role("button", name="Mitteilungen, 4 neu").click()
    await expect(page.get_by_role("dialog", name="Mitteilungen")).to_be_visible()
    await expect(page.get_by_role("tab", name="Ungelesen 4")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(inbox_items(page).first.locator("time")).to_have_text("now")
    group = inbox_items(page).filter(has_text="New appointments")
    await expect(group).to_contain_text("Ana and 2 others")
    await page.get_by_role("button", name="Confirm", exact=True).click()
    await expect(inbox_items(page).filter(has_text="Monday")).to_contain_text(
        "✓ Confirm", timeout=TIMEOUT_MS
    )
    assert await d.sql("SELECT action FROM notifyd.notifications WHERE id = $1", nid) == "confirm"
    for wide, high in ((360, 740), (1100, 760)):
        await page.set_viewport_size({"width": wide, "height": high})
        # (the window's resize event, which places the popover again, comes before a frame)
        await page.evaluate("new Promise((r) => requestAnimationFrame(() => r()))")
        assert await page.evaluate("document.documentElement.scrollWidth") <= wide
        box = await page.get_by_role("dialog").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= wide, box
        scroller = page.locator("notifyd-bell [part=scroller]")
        wider = await scroller.evaluate("(e) => e.scrollWidth - e.clientWidth")
        assert wider <= 0, (wide, wider)  # long unbroken labels wrap too
        if SHOTS:
            await page.screenshot(path=f"{SHOTS}/inbox-{wide}.png")
    if SHOTS:
        await page.emulate_media(color_scheme="dark")
        await page.set_viewport_size({"width": 1100, "height": 760})
        await page.screenshot(path=f"{SHOTS}/inbox-dark.png")
    # a live arrival while the popover is closed: a toast, which opens its item; an older item
    # that a sync or a poll brings because it changed is no arrival
    await page.keyboard.press("Escape")
    await page.evaluate(
        """window.notifyd.emit("notification", { ...window.notifyd.lastItem, id: 99999,
            title: "changed, not new", seq: 40, deliveredSeq: 3 })""".replace(
            "window.notifyd.lastItem",
            "document.querySelector('notifyd-bell').inbox.items()[0]",
        )
    )
    await d.notify("di", "Lab results ready")
    toast = page.locator("notifyd-bell [part=toast]")
    await expect(toast).to_contain_text("Lab results ready", timeout=TIMEOUT_MS)
    await expect(toast).to_have_count(1)
    await page.evaluate("window.stayHere = true")
    await toast.click()
    await expect(toast).to_have_count(0)
    await read_soon(d, "Lab results ready", "the toast's click")
    assert await page.evaluate("window.opened") == [None]
    assert not PAGE_ERRORS[page]


INLINE = """<!doctype html>
<html lang="de"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="margin: 0">
<notifyd-inbox categories="billing" style="height: 100vh"></notifyd-inbox>
<script type="module">
import { NotifydClient } from "%(notifyd)s/notifyd.js";
const client = new NotifydClient({ url: "%(notifyd)s", token: "%(token)s", storage: null,
  pollInterval: 300, %(options)s });
document.querySelector("notifyd-inbox").client = client;
client.start();
window.notifyd = client;
</script>
</body></html>
"""


async def test_the_inbox_inline_as_a_page_and_over_http_when_no_websocket_connects(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    """<notifyd-inbox> alone, as a whole page, in the page's language; and the same with every
    WebSocket refused, where the client polls: pages, marks and live arrivals over HTTP."""
    d = daemon
    for i in range(25):
        await insert(d, "fay", f"Rechnung {i}", category="billing" if i % 5 == 0 else None)
    blocked = 'WebSocket: class { constructor() { throw new Error("blocked"); } }'
    newest, total = "Rechnung 24", 25
    for round_, (options, state) in enumerate((("", "open"), (blocked, "polling"))):
        page = await (await browser.new_context()).new_page()
        errors: list[str] = PAGE_ERRORS.setdefault(page, [])
        page.on("pageerror", errors_into(errors))
        path = f"/inline-{state}.html"
        AppPages.pages[path] = INLINE % {
            "notifyd": d.http,
            "token": d.token("fay"),
            "options": options,
        }
        await page.goto(app_origin + path)
        await page.wait_for_function(f"window.notifyd && window.notifyd.state === '{state}'")
        listed = page.locator("notifyd-inbox li[data-id]")
        await expect(listed).to_have_count(20, timeout=TIMEOUT_MS)
        await expect(listed.first).to_contain_text(newest)
        await expect(listed.first.locator("time")).to_have_text("jetzt")  # lang="de"
        await listed.last.scroll_into_view_if_needed()
        await expect(listed).to_have_count(total, timeout=TIMEOUT_MS)
        await page.get_by_role("tab", name="billing").click()
        await expect(listed).to_have_count(5, timeout=TIMEOUT_MS)
        await listed.nth(round_).click()  # read: over HTTP while polling
        await expect(listed.nth(round_)).not_to_have_class("unread unseen", timeout=TIMEOUT_MS)
        newest, total = f"live while {state}", total + 1
        await d.notify("fay", newest)
        await page.get_by_role("tab", name="All").click()
        await expect(listed.first).to_contain_text(newest, timeout=TIMEOUT_MS)
        assert not errors
    read = "SELECT count(*) FROM notifyd.notifications WHERE read_at IS NOT NULL"
    assert await d.sql(read) == 2


async def test_system_notifications_and_sound_for_live_arrivals_only(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    """While the page is hidden and the user allowed it, a live arrival (not one already there)
    becomes a system notification, and the sound plays; a click on it opens the item."""
    d = daemon
    await d.notify("gus", "already there")
    stubs = """
    window.shown = []; window.played = [];
    Object.defineProperty(document, "visibilityState", { get: () => "hidden" });
    window.Notification = class {
      static permission = "granted";
      static requestPermission() { return Promise.resolve("granted"); }
      constructor(title, options) { window.shown.push({ title, ...options }); window.last = this; }
    };
    window.Audio = class { constructor(src) { this.src = src; }
      play() { window.played.push(this.src); return Promise.resolve(); } };
    """
    page = await open_page(
        browser, d, app_origin, "gus", bell='system-notifications sound="/ding.mp3"', setup=stubs
    )
    assert (
        await page.evaluate("document.querySelector('notifyd-bell').requestSystemNotifications()")
        == "granted"
    )
    await d.notify("gus", "Lab results ready")
    await page.wait_for_function("window.shown.length === 1", timeout=TIMEOUT_MS)
    shown = await page.evaluate("window.shown")
    assert shown[0]["title"] == "Lab results ready" and shown[0]["body"] == "message"
    assert await page.evaluate("window.played") == ["/ding.mp3"]
    await page.evaluate("window.stayHere = true; window.last.onclick()")
    await read_soon(d, "Lab results ready", "the system notification's click")
    assert [s["title"] for s in await page.evaluate("window.shown")] == ["Lab results ready"]
    # the app replaces its bell (a route change): the old one, out of the page, is silent
    await page.evaluate(
        """() => {
            const old = document.querySelector("notifyd-bell");
            const bell = document.createElement("notifyd-bell");
            for (const name of ["system-notifications", "sound"]) {
                bell.setAttribute(name, old.getAttribute(name));
            }
            old.replaceWith(bell);
            bell.client = old.client;
        }"""
    )
    await d.notify("gus", "Second result")
    await page.wait_for_function("window.shown.length === 2", timeout=TIMEOUT_MS)
    await page.wait_for_timeout(300)  # (a second copy would come within this)
    assert [s["title"] for s in await page.evaluate("window.shown")][1:] == ["Second result"]
    assert await page.evaluate("window.played") == ["/ding.mp3", "/ding.mp3"]
    assert not PAGE_ERRORS[page]


async def test_a_page_asked_for_before_a_live_change_does_not_undo_it(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    """The inbox's Feed (pure, run here in the page): what came live while a page was on its
    way (an item changed, read, deleted, a mark) wins over the page's older copy of it, and a
    page asked for before a reset is not used."""
    d = daemon
    page = await open_page(browser, d, app_origin, "hal")
    got = await page.evaluate(
        """async (base) => {
            const { Feed } = await import(`${base}/notifyd.js`);
            const item = (id, extra = {}) => ({ id, stream: "user:1", seq: id, deliveredSeq: id,
                category: null, read: false, seen: false, archived: false, snoozedUntil: null,
                createdAt: `2026-01-0${id}T00:00:00Z`, ...extra });
            const feed = new Feed();
            const since = feed.clock;  // the page is asked for here
            feed.upsert(item(3, { read: true }));  // read on another device
            feed.read({ ids: [2], readAt: "2026-02-01T00:00:00Z" });  // read here
            feed.remove(4);  // deleted
            feed.mark({ stream: "user:1", seq: 9, state: "seen", category: null,
                        target: "user:1", upto: 100, at: "2026-02-02T00:00:00Z" });
            feed.paged("all", null, { notifications: [4, 3, 2, 1].map((id) => item(id)),
                                      next: null }, since);
            const shown = feed.list("all", null).map((n) => [n.id, n.read, n.seen]);
            const later = feed.clock;
            feed.paged("unread", null, { notifications: [item(5)], next: null }, later);
            const fresh = feed.list("unread", null).map((n) => n.id);
            return { shown, fresh };
        }""",
        d.http,
    )
    assert got["shown"] == [[3, True, True], [2, True, True], [1, False, True]]
    assert got["fresh"] == [5, 1]  # a page asked for after them: as it is
    assert not PAGE_ERRORS[page]


async def test_the_inbox_as_the_docs_show_it(
    browser: Browser, daemon: Daemon, app_origin: str
) -> None:
    """A clinic's inbox: a group, an invoice with actions, a high-priority result, an
    announcement to everyone; light, dark and at phone width (the pictures of
    docs/browser.md, saved when NOTIFYD_INBOX_SCREENSHOTS names a folder)."""
    d = daemon
    for actor in ("Dr. Lee", "Dr. Kim"):
        await d.sql(
            "SELECT notifyd.notify('ivy', 'appointment', 'Ana Díaz: new appointment', "
            "'Monday 10:00, room 4', category => 'appointments', group_key => 'patient:7', "
            "actor => $1)",
            actor,
        )
    await d.sql(
        "SELECT notifyd.notify('ivy', 'invoice', 'Invoice #2041 is due', 'April: 120 EUR', "
        "category => 'billing', actions => $1::jsonb)",
        json.dumps([{"id": "pay", "label": "Pay now"}, {"id": "later", "label": "Later"}]),
    )
    await d.sql(
        "SELECT notifyd.notify('ivy', 'lab', 'Lab results ready', 'Blood panel: 3 values', "
        "'{}', 'high')"
    )
    await d.sql(
        "SELECT notifyd.broadcast('system', 'Maintenance tonight', '22:00 to 23:00: the "
        "portal is read-only', category => 'system')"
    )
    page = await open_page(browser, d, app_origin, "ivy", bell='categories="appointments,billing"')
    await page.get_by_role("button", name="Notifications, 4 new").click()
    listed = inbox_items(page)
    await expect(listed).to_have_count(4, timeout=TIMEOUT_MS)
    await expect(listed.first).to_contain_text("Maintenance tonight")
    await expect(listed.filter(has_text="Ana Díaz")).to_contain_text("Dr. Kim and 1 other")
    await expect(page.get_by_role("tab", name="Unread 4")).to_be_visible()
    await expect(page.get_by_role("tab", name="appointments 1")).to_be_visible()
    await expect(page.get_by_role("tab", name="billing 1")).to_be_visible()
    await expect(listed.filter(has_text="Lab results")).to_have_class(re.compile(r"\bhigh\b"))
    shots: list[tuple[str, Literal["light", "dark"], int, int]] = [
        ("inbox-light", "light", 1000, 620),
        ("inbox-dark", "dark", 1000, 620),
        ("inbox-phone", "light", 360, 720),
    ]
    for name, scheme, wide, high in shots:
        await page.emulate_media(color_scheme=scheme)
        await page.set_viewport_size({"width": wide, "height": high})
        await page.evaluate("new Promise((r) => requestAnimationFrame(() => r()))")
        box = await page.get_by_role("dialog").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= wide, (name, box)
        if wide == 360:
            assert box["width"] >= 340, box  # a sheet across the screen
        if SHOTS:
            await page.screenshot(path=f"{SHOTS}/{name}.png")
    assert not PAGE_ERRORS[page]
