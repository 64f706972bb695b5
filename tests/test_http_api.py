# The plain-HTTP side of the port: the polling API (/v1/...) answering like a sync-response,
# its errors and CORS, the browser client at /notifyd.js (and its declarations at /notifyd.d.ts),
# and the dev-only demo routes, which answer only their own address and pages, with the run's
# key.
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from protocol_schema import validate_server_frame
from support import ROOT, Daemon, http_request, running_daemon

from notifyd.core.protocol import poll_request
from notifyd.devserver import DEV_KEY_HEADER


def dev_key(d: Daemon) -> str:
    assert d.app.http_api.dev is not None
    return d.app.http_api.dev.key


async def api(
    d: Daemon, method: str, path: str, token: str | None = None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    """Status, headers and body: parsed when it is JSON, else the bytes."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, got, body = await http_request(d.app.port, method, path, headers)
    return (
        status,
        got,
        orjson.loads(body) if body and got.get("content-type") == "application/json" else body,
    )


def as_sync_response(body: object) -> dict[str, Any]:
    """A poll's body is a sync-response's data: the protocol's schema checks it."""
    assert isinstance(body, dict)
    validate_server_frame({"type": "notification:sync-response", "data": body})
    return body


async def test_poll_answers_like_a_sync_response(daemon: Daemon) -> None:
    for i in range(3):
        await daemon.notify("h1", f"n{i}")
    await daemon.notify("h2", "not yours")
    token = daemon.token("h1", ["staff"])
    status, headers, body = await api(daemon, "GET", "/v1/notifications", token)
    assert status == 200 and headers["cache-control"] == "no-store"
    first = as_sync_response(body)
    assert [n["seq"] for n in first["notifications"]] == [1, 2, 3]
    assert first["cursors"] == {"user:h1": 3, "role:staff": 0, "all": 0}
    await daemon.notify("h1", "later")
    status, _, body = await api(
        daemon, "GET", "/v1/notifications?cursor=user:h1:3&cursor=all:0&limit=10", token
    )
    later = as_sync_response(body)
    assert [n["title"] for n in later["notifications"]] == ["later"]
    # paging, and the token in the query for a simple cross-origin GET
    status, _, body = await api(
        daemon, "GET", f"/v1/notifications?cursor=user:h1:0&limit=2&token={token}"
    )
    page = as_sync_response(body)
    assert status == 200 and page["hasMore"] is True and page["cursors"]["user:h1"] == 2


async def test_poll_errors(daemon: Daemon) -> None:
    token = daemon.token("h3")
    cases = [
        (None, "/v1/notifications", 401, "auth-failed"),
        ("not-a-jwt", "/v1/notifications", 401, "auth-failed"),
        (daemon.token("h3", ttl=-60), "/v1/unread-count", 401, "auth-failed"),
        (token, "/v1/notifications?cursor=user:other:1", 403, "forbidden"),
        (token, "/v1/notifications?cursor=nonsense", 400, "invalid-data"),
        (token, "/v1/notifications?limit=5000", 400, "invalid-data"),
        (token, "/v1/notifications?since=yesterday", 400, "invalid-data"),
        (token, "/v1/nothing", 404, "not-found"),
    ]
    for tok, path, status, code in cases:
        got, headers, body = await api(daemon, "GET", path, tok)
        assert (got, body["code"]) == (status, code), (path, got, body)
        assert headers["access-control-allow-origin"] == "*"
    got, _, body = await api(daemon, "POST", "/v1/unread-count", token)
    assert got == 405 and body["code"] == "method-not-allowed"
    got, _, body = await api(daemon, "POST", "/v1/notifications/read?ids=x", token)
    assert got == 400 and body["code"] == "invalid-data"


async def test_unread_count_and_mark_read_over_http_reach_live_devices(daemon: Daemon) -> None:
    ids = [await daemon.notify("h4", f"n{i}") for i in range(3)]
    other = await daemon.notify("h5", "someone else's")
    device = await daemon.connect("h4")
    token = daemon.token("h4")
    counts = {"count": 3, "unseen": 3, "categories": {}}
    assert (await api(daemon, "GET", "/v1/unread-count", token))[2] == counts
    status, _, body = await api(
        daemon, "POST", f"/v1/notifications/read?ids={ids[0]},{other}", token
    )
    assert status == 200 and body["ids"] == [ids[0]]
    updated = (await device.next_data("notification:updated"))["notification"]
    assert (updated["id"], updated["read"], updated["readAt"]) == (ids[0], True, body["readAt"])
    assert (await device.next_data("notification:unread-count"))["count"] == 2
    status, _, body = await api(daemon, "POST", "/v1/notifications/read-all", token)
    assert body["ids"] == [] and body["readAt"]  # a mark (one per stream), no row per item
    zero = {"count": 0, "unseen": 0, "categories": {}}
    assert (await api(daemon, "GET", "/v1/unread-count", token))[2] == zero
    # a poll from before the marks replays them: the item read by id in its current state,
    # the marks of the user's streams (seen and read of each) that read the others
    status, _, page = await api(daemon, "GET", "/v1/notifications?cursor=user:h4:3", token)
    assert status == 200 and page["removed"] == [] and page["cursors"]["user:h4"] == 8
    assert [(n["id"], n["read"]) for n in page["notifications"]] == [(ids[0], True)]
    assert [(m["state"], m["target"]) for m in page["marks"]] == [
        ("seen", "user:h4"),
        ("read", "user:h4"),
        ("seen", "all"),
        ("read", "all"),
    ]
    # the other state operations over HTTP: archive the first, snooze the second
    status, _, body = await api(daemon, "POST", f"/v1/notifications/archive?ids={ids[0]}", token)
    assert (status, body) == (200, {"ids": [ids[0]], "all": False})
    status, _, body = await api(
        daemon, "POST", f"/v1/notifications/snooze?ids={ids[1]}&until=2099-01-01T00:00:00Z", token
    )
    assert (status, body) == (200, {"ids": [ids[1]], "all": False})
    status, _, body = await api(daemon, "POST", f"/v1/notifications/snooze?ids={ids[1]}", token)
    assert status == 400 and body["code"] == "invalid-data"  # no until
    status, _, body = await api(daemon, "POST", "/v1/notifications/unread?all=true", token)
    assert (status, sorted(body["ids"])) == (200, ids)
    status, _, body = await api(daemon, "GET", "/v1/unread-count", token)
    assert body == {
        "count": 1,
        "unseen": 0,
        "categories": {},
    }  # the third: not archived nor snoozed
    # the other user's row was not touched
    assert (
        await daemon.sql("SELECT read_at FROM notifyd.notifications WHERE id = $1", other) is None
    )


async def test_cors_preflight_and_allowed_origins(fresh_db: str) -> None:
    async with running_daemon(fresh_db) as d:
        status, headers, _ = await api(
            d,
            "OPTIONS",
            "/v1/notifications",
            Origin="https://app.example",
            **{"Access-Control-Request-Headers": "authorization"},
        )
        assert status == 204 and headers["access-control-allow-origin"] == "*"
        assert "Authorization" in headers["access-control-allow-headers"]
    async with running_daemon(fresh_db, allowed_origins=("https://app.example",)) as d:
        token = d.token("h6")
        _, headers, _ = await api(d, "GET", "/v1/unread-count", token, Origin="https://app.example")
        assert headers["access-control-allow-origin"] == "https://app.example"
        _, headers, _ = await api(
            d, "GET", "/v1/unread-count", token, Origin="https://evil.example"
        )
        assert "access-control-allow-origin" not in headers  # the browser withholds it


async def test_client_script_is_served_and_demo_routes_only_in_dev(fresh_db: str) -> None:
    async with running_daemon(fresh_db) as d:
        status, headers, body = await http_request(d.app.port, "GET", "/notifyd.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert headers["access-control-allow-origin"] == "*"
        assert b"export class NotifydClient" in body
        assert b'customElements.define("notifyd-bell"' in body
        status, headers, body = await http_request(d.app.port, "GET", "/notifyd.d.ts")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert b"export class NotifydClient {" in body and b'"notifyd-bell": NotifydBell' in body
        for method, path in (("GET", "/"), ("GET", "/dev/token"), ("POST", "/dev/notify")):
            status, _, _ = await http_request(d.app.port, method, path)
            assert status in (404, 405), path
    async with running_daemon(fresh_db, dev=True) as d:
        status, headers, body = await http_request(d.app.port, "GET", "/")
        assert status == 200 and b"notifyd demo" in body
        key = {DEV_KEY_HEADER: dev_key(d)}
        status, _, body = await http_request(d.app.port, "GET", "/dev/token?user=zoe", key)
        token = orjson.loads(body)["token"]
        assert d.app.admission.verify(token).user_id == "zoe"
        device = await d.connect("zoe")
        status, _, body = await http_request(
            d.app.port, "POST", "/dev/notify?user=zoe&title=Hi&priority=high", key
        )
        assert status == 200
        n = (await device.next_data("notification:new"))["notification"]
        assert (n["title"], n["priority"], n["id"]) == ("Hi", "high", orjson.loads(body)["id"])


def test_the_documented_poll_example_is_valid() -> None:
    """protocol/README.md §10: the example's query parses and its body is a sync-response."""
    text = (ROOT / "protocol" / "README.md").read_text()
    block = text.split("```http\n", 1)[1].split("```", 1)[0]
    request_line = block.splitlines()[0]
    target = request_line.split(" ")[1]
    req = poll_request(parse_qs(urlsplit(target).query))
    assert req.cursors == {"user:42": 318, "all": 11}
    body = block.rstrip().rsplit("\n\n", 1)[1]
    as_sync_response(orjson.loads(body))


async def test_dev_helpers_answer_only_their_own_address_pages_and_key(fresh_db: str) -> None:
    """What a page of another site can do against `notifyd dev` on this machine: a DNS
    rebinding (its own name in Host), a cross-site form or text/plain POST (its own Origin),
    a guess without the key printed in the banner. Each is refused; nothing is minted or sent."""
    async with running_daemon(fresh_db, dev=True) as d:
        port = d.app.port
        key = dev_key(d)
        own = {DEV_KEY_HEADER: key}

        async def status_of(method: str, path: str, **headers: str) -> int:
            status, _, body = await http_request(port, method, path, headers)
            if status == 403:
                assert orjson.loads(body)["code"] == "forbidden"
            return status

        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"LOCALHOST:{port}",
            f"[::1]:{port}",
        ):
            assert await status_of("GET", "/dev/token?user=u", Host=host, **own) == 200
        assert (
            await status_of("GET", "/dev/token?user=u", Origin=f"http://127.0.0.1:{port}", **own)
            == 200
        )
        refused = [
            {"Host": f"evil.example:{port}", **own},  # DNS rebinding
            {"Host": "127.0.0.1", **own},  # another port (80)
            {"Host": f"127.0.0.1:{port + 1}", **own},
            {"Origin": "http://evil.example", **own},
            {"Origin": f"https://127.0.0.1:{port}", **own},
            {"Origin": "null", **own},
            {},  # no key
            {DEV_KEY_HEADER: key[:-1] + ("x" if key[-1] != "x" else "y")},
            {DEV_KEY_HEADER: "\u00e9" + key},
        ]
        for headers in refused:
            for method, path in (
                ("GET", "/dev/token?user=42&role=admin"),
                ("POST", "/dev/notify?user=42&title=pwned"),
            ):
                assert await status_of(method, path, **headers) == 403, (path, headers)
        # the page itself holds no secret, but it too answers its own address only
        assert await status_of("GET", "/", Host=f"evil.example:{port}") == 403
        assert await status_of("GET", "/") == 200
        # a cross-site text/plain POST, as a browser sends it
        assert (
            await status_of(
                "POST",
                "/dev/notify?user=42&title=pwned",
                **{"Origin": "http://evil.example", "Content-Type": "text/plain"},
            )
            == 403
        )
        assert await d.sql("SELECT count(*) FROM notifyd.notifications") == 0
        assert await status_of("GET", "/dev/notify", **own) == 405


def test_the_dev_banner_links_the_demo_page_with_the_key() -> None:
    from pathlib import Path

    from notifyd.devserver import banner, new_dev_key

    key = new_dev_key()
    assert key != new_dev_key() and len(key) >= 32
    text = banner(
        "postgresql://x", Path("/usr/bin/psql"), "s" * 40, "127.0.0.1", 8765, key, Path("/d d")
    )
    assert f"Demo page: http://127.0.0.1:8765/#key={key}" in text
    assert f"http://127.0.0.1:8765/?user=bob#key={key}" in text
