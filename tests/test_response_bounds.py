# What one answer may cost the daemon: a sync-response and a poll's body hold at most
# NOTIFYD_MAX_RESPONSE_BYTES of notifications (a row larger than that goes alone), the rest
# follows page by page, each item once and in seq order, with and without cursors; and a user
# has at most NOTIFYD_MAX_HTTP_REQUESTS_PER_USER /v1 requests in flight on a process, an
# answer holding its slot until it has left (a client that does not read keeps it).
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import pytest_asyncio
from protocol_schema import validate_server_frame
from support import Client, Daemon, http_request, running_daemon

from notifyd.edge.http_api import UserRequests

BUDGET = 4096
# A row's message sizes: pages of two, then one larger than any page, alone.
SIZES = [1500, 1500, 1500, 1500, 10_000, 1500, 1500, 1500]

Page = dict[str, Any]


@pytest_asyncio.fixture
async def small_pages(fresh_db: str) -> AsyncIterator[Daemon]:
    async with running_daemon(fresh_db, max_response_bytes=BUDGET) as d:
        yield d


async def write(d: Daemon, user: str | None, sizes: list[int], role: str | None = None) -> None:
    for i, size in enumerate(sizes):
        if role is None:
            await d.sql(
                "SELECT notifyd.notify($1, 'test', $2, repeat('x', $3))", user, f"n{i}", size
            )
        else:
            await d.sql(
                "SELECT notifyd.notify_role($1, 'test', $2, repeat('x', $3))", role, f"n{i}", size
            )


async def syncing(d: Daemon, user: str, roles: list[str] | None = None) -> Client:
    """A client connected with ?sync=1: rows written just before it connected do not reach it
    live (a sync would leave them out, sent already), only by its sync."""
    client = await d.raw(f"?sync=1&token={d.token(user, roles or [])}")
    await client.expect("connection-confirmed")
    return client


async def wire_sizes(d: Daemon) -> dict[tuple[str, int], int]:
    """(stream, seq) -> bytes of the row's wire text, as the daemon counts them."""
    rows = await (await d.pool()).fetch(
        "SELECT stream, seq, octet_length(notifyd.to_wire(n)::text) AS size "
        "FROM notifyd.notifications n"
    )
    return {(r["stream"], r["seq"]): r["size"] for r in rows}


async def walk(first: Page, more: Callable[[dict[str, int]], Awaitable[Page]]) -> list[Page]:
    """The pages from `first` on, each next one asked with the previous one's cursors."""
    pages = [first]
    while pages[-1]["hasMore"]:
        assert len(pages) < 50, "paging does not end"
        pages.append(await more(pages[-1]["cursors"]))
    return pages


def check_pages(
    pages: list[Page], sizes: dict[tuple[str, int], int], expected: dict[str, list[int]]
) -> None:
    """Every page within the budget (or one row alone), none cut before the budget; the pages
    together give each stream's expected seqs once, in order."""
    got: dict[str, list[int]] = {}
    items = [[(n["stream"], n["seq"]) for n in page["notifications"]] for page in pages]
    for i, page in enumerate(items):
        total = sum(sizes[key] for key in page)
        assert total <= BUDGET or len(page) == 1, (i, total, page)
        if i + 1 < len(items) and items[i + 1]:
            # the next page's first row did not fit beside this page's
            assert total + sizes[items[i + 1][0]] > BUDGET, (i, total, items[i + 1][0])
        for stream, seq in page:
            got.setdefault(stream, []).append(seq)
    assert got == expected


async def test_sync_pages_by_bytes_and_a_row_too_large_goes_alone(small_pages: Daemon) -> None:
    d = small_pages
    await write(d, "b1", SIZES)
    client = await syncing(d, "b1")
    first = await client.sync({"user:b1": 0, "all": 0})
    assert [n["seq"] for n in first["notifications"]] == [1, 2]
    assert first["hasMore"] is True and first["cursors"] == {"user:b1": 2, "all": 0}
    pages = await walk(first, lambda cursors: client.sync(cursors))
    assert [[n["seq"] for n in p["notifications"]] for p in pages] == [
        [1, 2],
        [3, 4],
        [5],
        [6, 7],
        [8],
    ]
    check_pages(pages, await wire_sizes(d), {"user:b1": list(range(1, 9))})
    await d.notify("b1", "live")  # the stream is caught up: live again
    assert (await client.next_data("notification:new"))["notification"]["seq"] == 9


async def test_latest_items_are_bounded_too_and_page_on_from_the_oldest(
    small_pages: Daemon,
) -> None:
    """Streams asked without a cursor: their latest items, oldest first, streams in turn
    within one budget; the pages that follow continue after the last item given."""
    d = small_pages
    await write(d, "b2", SIZES)
    await write(d, None, [1500, 1500, 1500], role="crew")
    client = await syncing(d, "b2", ["crew"])
    first = await client.sync({})
    assert first["hasMore"] is True
    pages = await walk(first, lambda cursors: client.sync(cursors))
    check_pages(pages, await wire_sizes(d), {"user:b2": list(range(1, 9)), "role:crew": [1, 2, 3]})
    # `limit` still bounds the count: the latest 3 of user:b2, from seq 6 on
    limited = await walk(await client.sync({}, limit=3), lambda cursors: client.sync(cursors))
    got = [(n["stream"], n["seq"]) for p in limited for n in p["notifications"]]
    assert [seq for stream, seq in got if stream == "user:b2"][:3] == [6, 7, 8]


async def test_poll_pages_by_bytes(small_pages: Daemon) -> None:
    d = small_pages
    await write(d, "b3", SIZES)
    token = d.token("b3")

    async def poll(cursors: dict[str, int]) -> Page:
        query = "&".join(f"cursor={quote(f'{s}:{seq}')}" for s, seq in cursors.items())
        status, _, body = await http_request(
            d.app.port, "GET", f"/v1/notifications?{query}", {"Authorization": f"Bearer {token}"}
        )
        assert status == 200, body
        page: Page = orjson.loads(body)
        validate_server_frame({"type": "notification:sync-response", "data": page})
        return page

    pages = await walk(await poll({"user:b3": 0}), poll)
    check_pages(pages, await wire_sizes(d), {"user:b3": list(range(1, 9))})
    # without a cursor as well
    pages = await walk(await poll({}), poll)
    check_pages(pages, await wire_sizes(d), {"user:b3": list(range(1, 9))})


def stalled_poll(port: int, token: str) -> socket.socket:
    """A poll whose answer is never read (a small receive window: it cannot all be sent)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /v1/notifications HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


async def test_a_users_requests_in_flight_are_capped_until_their_answers_leave(
    fresh_db: str,
) -> None:
    async with running_daemon(fresh_db, max_http_requests_per_user=2, auth_timeout=120.0) as d:
        await write(d, "h1", [3_000_000])  # one row: every answer is 3 MB, too much to buffer
        token = d.token("h1")
        stalled = [stalled_poll(d.app.port, token) for _ in range(2)]
        try:

            async def status_of(tok: str) -> tuple[int, Any]:
                status, _, body = await http_request(
                    d.app.port, "GET", "/v1/unread-count", {"Authorization": f"Bearer {tok}"}
                )
                return status, orjson.loads(body)

            async def refused() -> Any:
                while True:  # until both stalled polls hold their slots
                    status, body = await status_of(token)
                    if status == 429:
                        return body
                    await asyncio.sleep(0.05)

            body = await asyncio.wait_for(refused(), 10)
            assert body["code"] == "too-many-requests" and "2 requests" in body["message"]
            assert (await status_of(d.token("h2")))[0] == 200  # other users are not held up
            assert d.app.http_api.requests.in_flight("h1") == 2
            stalled.pop().close()  # one answer is gone with its connection: its slot too
            while (answer := await status_of(token))[0] == 429:
                await asyncio.sleep(0.05)
            assert answer == (200, {"count": 1, "unseen": 1, "categories": {}})
        finally:
            for sock in stalled:
                sock.close()
        while d.app.http_api.requests.in_flight("h1"):
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "path",
    ["/v1/notifications", "/v1/notifications?cursor=user:x:1", "/v1/notifications/read?ids=1"],
)
async def test_answered_requests_give_their_slot_back(daemon: Daemon, path: str) -> None:
    """Answers (refusals too: 403, 405) give their slot back once sent."""
    token = daemon.token("h3")
    for _ in range(3 * daemon.settings.max_http_requests_per_user):
        await http_request(daemon.app.port, "GET", path, {"Authorization": f"Bearer {token}"})
    while daemon.app.http_api.requests.in_flight("h3"):
        await asyncio.sleep(0.05)  # the last connections close a moment after their answer
    status, _, _ = await http_request(
        daemon.app.port, "GET", "/v1/unread-count", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200


def test_a_slot_is_given_back_once_however_often_its_answer_says_done() -> None:
    requests = UserRequests()
    first, second = requests.take("u", 2), requests.take("u", 2)
    assert first is not None and second is not None
    assert requests.take("u", 2) is None and requests.take("v", 2) is not None
    first()
    first()  # a second call changes nothing: the other slot stays taken
    assert requests.in_flight("u") == 1
    assert requests.take("u", 2) is not None and requests.take("u", 2) is None
