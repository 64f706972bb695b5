"""Plain HTTP on the daemon's port: health, metrics, the polling API (/v1/...) for clients that
cannot hold a WebSocket, the browser client at /notifyd.js and, under `notifyd dev`, the demo
page and its helpers; and the admin listener's health and metrics. The server adapter hands
over a parsed request and writes the HttpAnswer back.
The /v1 API is authenticated by a bearer token, never a cookie, so any page may call it (CORS
`*`) unless NOTIFYD_ALLOWED_ORIGINS names the pages that may. Its memory is bounded per user:
an answer holds at most NOTIFYD_MAX_RESPONSE_BYTES of notifications (store.sync pages by
bytes), and a user has at most NOTIFYD_MAX_HTTP_REQUESTS_PER_USER requests in flight.
The dev routes answer only requests to the dev server's own address, from its own
pages, with the key of the run.

What a /v1 route does is operations.py's; this module parses the request, calls it and
frames the answer. It writes no SQL (the dev helpers call store.py) and touches no socket.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.resources
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from notifyd.config import Settings
from notifyd.core.auth import Identity, issue_token, single_header, token_from
from notifyd.core.codes import ErrorCode
from notifyd.core.errors import AuthError, ClientError, StoreError
from notifyd.core.protocol import (
    format_time,
)
from notifyd.devserver import DevAccess, new_dev_key
from notifyd.operations import BY_HTTP, Operations
from notifyd.ops.metrics import CONTENT_TYPE as METRICS_TYPE
from notifyd.ops.metrics import Metrics
from notifyd.storage.store import Store

log = logging.getLogger(__name__)

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
DEV_TOKEN_TTL = 24 * 3600
OPERATIONS = ("/healthz", "/readyz", "/metrics")  # all the admin listener serves
DEMO = ("/", "/index.html")  # the demo page, under `notifyd dev`
DEV_HELPERS = ("/dev/token", "/dev/notify")  # what it calls, with the run's key


@dataclasses.dataclass(slots=True)
class HttpAnswer:
    status: int
    body: bytes
    content_type: str = JSON
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # to call once the answer is sent, or its connection gone: gives the request's slot back
    done: Callable[[], None] | None = None


class UserRequests:
    """/v1 requests in flight per user: from the token's check until the answer has left the
    process (its connection closed), so an answer that a client does not read holds its slot
    for as long as it waits in the process's buffers."""

    def __init__(self) -> None:
        self._count: dict[str, int] = {}

    def take(self, user_id: str, limit: int) -> Callable[[], None] | None:
        """A slot of `user_id`'s: the function that gives it back (once, however often it is
        called), or None when the user has `limit` requests in flight already."""
        count = self._count.get(user_id, 0)
        if count >= limit:
            return None
        self._count[user_id] = count + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            left = self._count[user_id] - 1
            if left:
                self._count[user_id] = left
            else:
                del self._count[user_id]

        return give_back

    def in_flight(self, user_id: str) -> int:
        return self._count.get(user_id, 0)


def _static(name: str) -> bytes:
    return (importlib.resources.files("notifyd") / "static" / name).read_bytes()


def _error(code: ErrorCode, message: str | None = None) -> HttpAnswer:
    """An error answer: JSON {code, message} with the code's HTTP status."""
    body = {"code": code, "message": message or code.description}
    return HttpAnswer(code.status, orjson.dumps(body))


def _refused(exc: ClientError) -> HttpAnswer:
    return _error(exc.code, exc.message)


class HttpApi:
    """Answers every request on the port but the WebSocket upgrade."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        operations: Operations,
        verify: Callable[[str], Identity],
        readiness: Callable[[], Awaitable[dict[str, bool]]],
        metrics: Metrics,
        dev: bool = False,
        *,
        dev_key: str | None = None,
        port: Callable[[], int] = lambda: 0,
    ) -> None:
        """`dev`: serve the demo page and its helpers, which need `dev_key` (one is made when
        none is given); `port`: the port the server listens on, once bound."""
        self.settings = settings
        self.store = store
        self.operations = operations
        self.verify = verify
        self.readiness = readiness
        self.metrics = metrics
        self.dev = DevAccess(dev_key or new_dev_key(), port) if dev else None
        self.requests = UserRequests()
        self.client_js = _static("notifyd.js")
        self.client_types = _static("notifyd.d.ts")
        self.demo = _static("demo.html") if dev else b""

    async def answer(
        self, method: str, target: str, headers: Any, admin: bool = False
    ) -> HttpAnswer:
        """`admin`: the request came to the admin listener, which serves only health and
        metrics; /metrics is on the public port only when there is no admin listener."""
        parts = urlsplit(target)
        route, query = parts.path, parse_qs(parts.query)
        if admin:
            if route not in OPERATIONS:
                return HttpAnswer(404, b"not found\n", TEXT)
            if method != "GET":
                return HttpAnswer(405, b"method not allowed\n", TEXT, [("Allow", "GET")])
            return await self._operations(route, admin)
        try:
            origin = single_header(headers, "Origin")
        except ClientError as exc:
            return _refused(exc)
        cors = self._cors(origin)
        if route.startswith("/v1/"):
            if method == "OPTIONS":  # a browser's preflight for the Authorization header
                return HttpAnswer(
                    204,
                    b"",
                    TEXT,
                    [
                        *cors,
                        ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                        ("Access-Control-Allow-Headers", "Authorization"),
                        ("Access-Control-Max-Age", "600"),
                    ],
                )
            answer = await self._api(method, route, query, headers)
            answer.headers += [*cors, ("Cache-Control", "no-store")]
            return answer
        if self.dev is not None and route in (*DEMO, *DEV_HELPERS):
            return await self._dev(self.dev, method, route, query, headers)
        if method != "GET":
            return HttpAnswer(405, b"method not allowed\n", TEXT, [("Allow", "GET")])
        if route in OPERATIONS:
            return await self._operations(route, admin)
        if route == "/notifyd.js":
            # a module script from another origin needs CORS; it holds no secret
            return HttpAnswer(
                200,
                self.client_js,
                "text/javascript; charset=utf-8",
                [("Access-Control-Allow-Origin", "*"), ("Cache-Control", "no-cache")],
            )
        if route == "/notifyd.d.ts":  # its TypeScript declarations
            return HttpAnswer(
                200,
                self.client_types,
                "text/plain; charset=utf-8",
                [("Access-Control-Allow-Origin", "*"), ("Cache-Control", "no-cache")],
            )
        return HttpAnswer(404, b"not found\n", TEXT)

    async def _operations(self, route: str, admin: bool) -> HttpAnswer:
        if route == "/healthz":
            return HttpAnswer(200, b"ok\n", TEXT)
        if route == "/readyz":
            checks = await self.readiness()
            failed = [name for name, ok in checks.items() if not ok]
            if not failed:
                return HttpAnswer(200, b"ready\n", TEXT)
            return HttpAnswer(503, f"not ready: {', '.join(failed)} down\n".encode(), TEXT)
        if self.settings.admin_port is not None and not admin:
            return HttpAnswer(404, b"not found\n", TEXT)
        return HttpAnswer(200, self.metrics.render(), METRICS_TYPE)

    def _cors(self, origin: str | None) -> list[tuple[str, str]]:
        allowed = self.settings.allowed_origins
        if not allowed:
            return [("Access-Control-Allow-Origin", "*")]
        if origin is not None and origin in allowed:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return [("Vary", "Origin")]

    # -- /v1 ------------------------------------------------------------------------------

    async def _api(
        self, method: str, route: str, query: dict[str, list[str]], headers: Any
    ) -> HttpAnswer:
        operation = BY_HTTP.get((method, route))
        if operation is None or operation.from_query is None:
            if any(path == route for _, path in BY_HTTP):
                return _error(ErrorCode.METHOD_NOT_ALLOWED, f"{method} is not allowed here")
            return _error(ErrorCode.NOT_FOUND)
        try:
            token, _ = token_from(headers, query)  # no cookie: see the module's docstring
            if not token:
                return _error(ErrorCode.AUTH_FAILED, "send Authorization: Bearer <token>")
            identity = self.verify(token)
        except AuthError as exc:
            return _error(exc.code, str(exc))
        except ClientError as exc:  # e.g. two Authorization headers (token_from)
            return _refused(exc)
        limit = self.settings.max_http_requests_per_user
        done = self.requests.take(identity.user_id, limit)
        if done is None:
            return _refused(
                ClientError(
                    ErrorCode.TOO_MANY_REQUESTS,
                    f"this user has {limit} requests in flight already; "
                    "send the next once one is answered",
                )
            )
        try:
            request = operation.from_query(query)
            data = await operation.run(self.operations, identity, request, "http")
            answer = HttpAnswer(200, orjson.dumps(data))
        except ClientError as exc:
            answer = _refused(exc)
        except StoreError as exc:
            log.warning("%s %s failed: %s", method, route, exc)
            answer = _refused(ClientError(ErrorCode.UNAVAILABLE))
        except Exception:  # a bug: answered in the API's own terms, not as a bare 500
            log.exception("%s %s failed", method, route)
            answer = _refused(ClientError(ErrorCode.INTERNAL_ERROR))
        except BaseException:
            done()
            raise
        answer.done = done
        return answer

    # -- `notifyd dev` only ----------------------------------------------------------------

    async def _dev(
        self, dev: DevAccess, method: str, route: str, query: dict[str, list[str]], headers: Any
    ) -> HttpAnswer:
        """The demo page and its helpers: for this dev server's address and pages only (no
        other site's page, nor one reached by DNS rebinding, may mint tokens or send), and the
        helpers only with the key of this run."""
        refusal = dev.refusal(headers, need_key=route in DEV_HELPERS)
        if refusal is not None:
            return _error(ErrorCode.FORBIDDEN, refusal)
        allowed = "POST" if route == "/dev/notify" else "GET"
        if method != allowed:
            return HttpAnswer(405, b"method not allowed\n", TEXT, [("Allow", allowed)])
        if route == "/dev/notify":
            return await self._dev_notify(query)
        if route == "/dev/token":
            return self._dev_token(query)
        return HttpAnswer(
            200, self.demo, "text/html; charset=utf-8", [("Cache-Control", "no-cache")]
        )

    def _dev_token(self, query: dict[str, list[str]]) -> HttpAnswer:
        user = (query.get("user") or ["alice"])[-1][:64]
        roles = [r for r in (query.get("role") or ["user"]) if r][:8]
        token = issue_token(self.settings.jwt_secrets[0], user, roles, ttl=DEV_TOKEN_TTL)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=DEV_TOKEN_TTL)
        return HttpAnswer(
            200,
            orjson.dumps(
                {"token": token, "user": user, "roles": roles, "expiresAt": format_time(expires)}
            ),
            headers=[("Cache-Control", "no-store")],
        )

    async def _dev_notify(self, query: dict[str, list[str]]) -> HttpAnswer:
        def one(name: str, default: str) -> str:
            return (query.get(name) or [default])[-1][:2000]

        def optional(name: str) -> str | None:
            return one(name, "").strip() or None

        try:
            nid = await self.store.insert_demo(
                one("user", "alice"),
                one("title", "Hello"),
                one("message", ""),
                one("priority", "medium"),
                optional("category"),
                optional("group"),
                optional("actor"),
                one("actions", "") in ("on", "1", "true"),
            )
        except ClientError as exc:
            return _refused(exc)
        except StoreError as exc:
            return _error(ErrorCode.UNAVAILABLE, str(exc))
        return HttpAnswer(200, orjson.dumps({"id": nid}))
