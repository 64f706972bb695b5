"""Presence across processes and hosts through Redis; the only module that talks to Redis.

Each process (a node) keeps its LocalPresence (notifyd.core.presence) and tells Redis only when
one of its users comes or goes; atomic Lua scripts keep the cluster-wide counts and publish the
changes on a channel every node follows. A node heartbeats its entry; a node that stops
heartbeating is dropped (its users go offline) by the next heartbeat of any other node. Without
Redis, or while it is unreachable, presence is this process's own and changes are delivered
locally. Who is online and who may see whom is decided in notifyd.core.presence; this module
owns only keeping Redis in step with it. No other module imports redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from notifyd.config import Settings
from notifyd.core.backoff import Backoff
from notifyd.core.presence import LocalPresence, PresenceChange, UserPresence
from notifyd.ops.metrics import Metrics

log = logging.getLogger(__name__)

KEEP_LAST_SEEN = 30 * 24 * 3600  # seconds Redis remembers an offline user's lastSeen
JOIN_TIMEOUT = 2.0  # how long start() waits for Redis before serving with local presence
REDIS_TIMEOUT = 2.0
GATHER_SECONDS = 0.02  # changes arriving within this window go to Redis in one call

# Keys, under the prefix p: `nodes` (zset node -> expiry, ms), `node:<id>` (hash user -> roles
# JSON, the users with a device on that node), `user:<id>` (hash: nodes with a device, roles,
# seen in ms), `roles` (hash role -> online users), `online` (set of online users); channel
# `presence`. Needs Redis 5 or newer (TIME before writes) and a noeviction policy.
_PRELUDE = """
local p, node = ARGV[1], ARGV[2]
local grace, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function publish(on, user, roles)
  redis.call('PUBLISH', p .. 'presence', '{"on":' .. on .. ',"u":' .. cjson.encode(user)
    .. ',"r":' .. roles .. ',"at":' .. string.format('%d', now) .. '}')
end
local function online(user, roles)
  local key = p .. 'user:' .. user
  if redis.call('HINCRBY', key, 'nodes', 1) ~= 1 then return end
  redis.call('HSET', key, 'roles', roles)
  redis.call('PERSIST', key)
  redis.call('SADD', p .. 'online', user)
  for _, role in ipairs(cjson.decode(roles)) do redis.call('HINCRBY', p .. 'roles', role, 1) end
  publish('true', user, roles)
end
local function offline(user)
  local key = p .. 'user:' .. user
  local n = redis.call('HINCRBY', key, 'nodes', -1)
  if n > 0 then return end
  redis.call('HSET', key, 'nodes', 0, 'seen', string.format('%d', now))
  redis.call('EXPIRE', key, keep)
  redis.call('SREM', p .. 'online', user)
  if n < 0 then return end
  local roles = redis.call('HGET', key, 'roles') or '[]'
  for _, role in ipairs(cjson.decode(roles)) do
    if redis.call('HINCRBY', p .. 'roles', role, -1) <= 0 then
      redis.call('HDEL', p .. 'roles', role)
    end
  end
  publish('false', user, roles)
end
local function join(user, roles)
  if redis.call('HSETNX', p .. 'node:' .. node, user, roles) == 1 then online(user, roles) end
end
local function leave(user)
  if redis.call('HDEL', p .. 'node:' .. node, user) == 1 then offline(user) end
end
local function drop(dead)
  redis.call('ZREM', p .. 'nodes', dead)
  local key = p .. 'node:' .. dead
  for _, user in ipairs(redis.call('HKEYS', key)) do offline(user) end
  redis.call('DEL', key)
end
local function reap()
  local dead = redis.call('ZRANGEBYSCORE', p .. 'nodes', '-inf', now)
  for _, other in ipairs(dead) do drop(other) end
  return #dead
end
"""

# Heartbeat, changes and reaping in one call. -1: this node is unknown (Redis restarted, or
# the node was silent too long and dropped): nothing applied, reconcile instead.
_APPLY = (
    _PRELUDE
    + """
if not redis.call('ZSCORE', p .. 'nodes', node) then return -1 end
redis.call('ZADD', p .. 'nodes', now + grace, node)
for i = 5, #ARGV, 3 do
  if ARGV[i] == '+' then join(ARGV[i + 1], ARGV[i + 2]) else leave(ARGV[i + 1]) end
end
return reap()
"""
)

# Make Redis hold exactly this node's users (ARGV from 5: user, roles pairs).
_RECONCILE = (
    _PRELUDE
    + """
redis.call('ZADD', p .. 'nodes', now + grace, node)
local want = {}
for i = 5, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
for _, user in ipairs(redis.call('HKEYS', p .. 'node:' .. node)) do
  if not want[user] then leave(user) end
end
for user, roles in pairs(want) do join(user, roles) end
return reap()
"""
)

_LEAVE = (
    _PRELUDE
    + """
drop(node)
return 0
"""
)


def _roles_json(roles: Iterable[str]) -> str:
    return orjson.dumps(list(roles)).decode()


class ClusterPresence:
    """Presence for the App: `connected`/`disconnected` per device, `query`, and `deliver`
    called with every change the local watchers should see, from whichever node."""

    def __init__(
        self, settings: Settings, deliver: Callable[[PresenceChange], None], metrics: Metrics
    ) -> None:
        self.local = LocalPresence()
        self.deliver = deliver
        self.metrics = metrics
        self.node_id = uuid.uuid4().hex
        self.url = settings.redis_url
        if self.url is None:
            metrics.without_redis()
        self.prefix = settings.redis_prefix
        self.beat = settings.presence_ttl / 5
        # Offline within the TTL after a kill -9: expiry after 3 beats, seen by the next beat.
        self.grace_ms = int(settings.presence_ttl * 600)
        self.up = False  # the cluster-wide view is in effect
        self._joining = False  # subscribed, registering: changes queue for Redis
        self._inflight: list[PresenceChange] = []  # sent to Redis, not yet applied
        self._shown: dict[str, tuple[str, ...]] = {}  # users our watchers were told are online
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._pending: list[PresenceChange] = []
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._down_since: float | None = None

    # -- the App's side -------------------------------------------------------------------

    def connected(self, user_id: str, roles: tuple[str, ...]) -> None:
        change = self.local.connected(user_id, roles, time.time())
        if change is not None:
            self._changed(change)

    def disconnected(self, user_id: str) -> None:
        change = self.local.disconnected(user_id, time.time())
        if change is not None:
            self._changed(change)

    def _changed(self, change: PresenceChange) -> None:
        if self.up or self._joining:
            self._pending.append(change)  # delivered when Redis publishes it back
            self._wake.set()
        else:
            self._deliver(change)

    def _deliver(self, change: PresenceChange) -> None:
        """To this process's watchers; remembers what they were told, for _resync_watchers."""
        if change.online:
            self._shown[change.user_id] = change.roles
        else:
            self._shown.pop(change.user_id, None)
        try:
            self.deliver(change)
        except Exception:
            log.exception("delivering a presence change failed")

    async def query(
        self, user_ids: Sequence[str], roles: Sequence[str]
    ) -> tuple[list[UserPresence], dict[str, int]]:
        """Each user's presence and the online users of each role, cluster-wide if possible."""
        now = time.time()
        local = [self.local.state(u, now) for u in user_ids]
        if not self.up or self._redis is None:
            return local, self.local.role_counts(roles)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.hmget(f"{self.prefix}user:{user_id}", "nodes", "seen", "roles")
                if roles:
                    pipe.hmget(f"{self.prefix}roles", *roles)
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("presence query answered from this process only: %s", exc)
            self._wake.set()  # the runner's next call tells whether Redis is down
            return local, self.local.role_counts(roles)
        users = []
        for mine, (nodes, seen, roles_json) in zip(local, answers, strict=False):
            if mine.online:  # its coming online may not have reached Redis yet
                users.append(mine)
            elif nodes is not None and int(nodes) > 0:
                users.append(
                    UserPresence(mine.user_id, True, now, tuple(orjson.loads(roles_json or "[]")))
                )
            elif seen is not None:
                users.append(
                    UserPresence(
                        mine.user_id,
                        False,
                        int(seen) / 1000,
                        tuple(orjson.loads(roles_json or "[]")),
                    )
                )
            else:
                users.append(mine)
        counts = {r: int(n or 0) for r, n in zip(roles, answers[-1], strict=True)} if roles else {}
        return users, counts

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster (briefly waiting for Redis), then keep it in step in the background."""
        if self.url is None:
            return
        self._redis = aioredis.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            socket_keepalive=True,
            health_check_interval=max(1, int(self.beat)),
        )
        self._scripts = {
            name: self._redis.register_script(src)
            for name, src in (("apply", _APPLY), ("reconcile", _RECONCILE), ("leave", _LEAVE))
        }
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="presence")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(JOIN_TIMEOUT):
                await self._joined.wait()
        if not self.up:
            log.warning(
                "Redis is unreachable at start: presence is local to this process until it is back"
            )

    async def stop(self) -> None:
        """Leave the cluster: this node's users who have no other device go offline now."""
        for task in (self._runner, self._subscriber):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._redis is None:
            return
        if self._joined.is_set():  # idempotent; also undoes a reconcile cut short
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    await self._script("leave")
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("could not leave the presence cluster: %s", exc)
        await self._redis.aclose()

    # -- keeping Redis in step ------------------------------------------------------------

    async def _script(self, name: str, *extra: str | float) -> int:
        result = await self._scripts[name](
            args=[self.prefix, self.node_id, self.grace_ms, KEEP_LAST_SEEN, *extra]
        )
        return int(result)

    async def _run(self) -> None:
        backoff = Backoff(0.1, max(0.1, self.beat))
        while True:
            try:
                if not self.up:
                    await self._join()
                    backoff.reset()
                await self._step()
            except (RedisError, OSError, TimeoutError) as exc:
                self._went_down(exc)
                await asyncio.sleep(backoff.next())
            except Exception as exc:  # a bug must not stop the heartbeat for good
                log.exception("presence cluster step failed")
                self._went_down(exc)
                await asyncio.sleep(self.beat)

    async def _join(self) -> None:
        """Subscribe first (so nothing published from now on is missed), then reconcile."""
        assert self._redis is not None
        if self._subscriber is not None:
            self._subscriber.cancel()
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(f"{self.prefix}presence")
        self._subscriber = asyncio.get_running_loop().create_task(
            self._follow(pubsub), name="presence-subscriber"
        )
        # From here on changes queue for Redis (apply after reconcile is idempotent).
        self._joining = True
        await self._reconcile()
        if self._subscriber.done():
            raise ConnectionError("the presence subscription was lost while joining")
        await self._resync_watchers()
        was_down = self._down_since
        self.up, self._joining = True, False
        self._joined.set()
        self.metrics.redis_up.set(1)
        if was_down is not None:
            log.warning(
                "Redis is reachable again after %.1fs: presence is cluster-wide again",
                time.monotonic() - was_down,
            )
            self._down_since = None
        else:
            log.info("presence is cluster-wide through Redis (node %s)", self.node_id)

    async def _resync_watchers(self) -> None:
        """After an outage, tell this process's watchers what changed meanwhile elsewhere
        (events published while we were not subscribed are gone)."""
        if not self._shown and not self._joined.is_set():
            return
        assert self._redis is not None
        online = {str(u) for u in await self._redis.smembers(f"{self.prefix}online")}
        now = time.time()
        for user_id, roles in list(self._shown.items()):
            if user_id not in online and not self.local.state(user_id, now).online:
                self._deliver(PresenceChange(False, user_id, roles, now))
        new = [u for u in online if u not in self._shown]
        if new:
            async with self._redis.pipeline(transaction=False) as pipe:
                for other in new:
                    pipe.hget(f"{self.prefix}user:{other}", "roles")
                answers = await pipe.execute()
            for other, roles_json in zip(new, answers, strict=True):
                self._deliver(
                    PresenceChange(True, other, tuple(orjson.loads(roles_json or "[]")), now)
                )

    async def _reconcile(self) -> None:
        pairs: list[str] = []
        for user_id, roles in self.local.online().items():
            pairs += (user_id, _roles_json(roles))
        await self._script("reconcile", *pairs)

    async def _step(self) -> None:
        """Wait for changes or the next heartbeat; send both in one call."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancel that arrives as
        # the event is set, and stop() would wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.beat):
                await self._wake.wait()
        self._wake.clear()
        if not self.up:
            return
        if self._subscriber is None or self._subscriber.done():
            raise ConnectionError("the presence subscription was lost")
        if self._pending:
            await asyncio.sleep(GATHER_SECONDS)  # a storm of arrivals becomes one call
        changes, self._pending = self._pending, []
        self._inflight = changes
        ops: list[str] = []
        for change in changes:
            ops += (
                ("+", change.user_id, _roles_json(change.roles))
                if change.online
                else ("-", change.user_id, "")
            )
        result = await self._script("apply", *ops)
        self._inflight = []
        if result < 0:
            log.warning(
                "this node was unknown to Redis (restarted, or this process was "
                "silent too long); registering its %d online users again",
                len(self.local.online()),
            )
            await self._reconcile()
        elif result:
            log.info("dropped %d presence nodes that stopped heartbeating", result)

    async def _follow(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    continue
                try:
                    event = orjson.loads(message["data"])
                    at = float(event["at"]) / 1000
                    if not 0 <= at < 1e11:
                        raise ValueError(f"time {at!r} out of range")
                    change = PresenceChange(
                        bool(event["on"]), str(event["u"]), tuple(map(str, event["r"])), at
                    )
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    log.warning("ignoring a malformed presence message: %s", exc)
                    continue
                self._deliver(change)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            self._wake.set()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _went_down(self, exc: BaseException) -> None:
        self.metrics.redis_errors.inc()
        if self._subscriber is not None and self._subscriber is not asyncio.current_task():
            self._subscriber.cancel()
        # What may never have reached the cluster still reaches this process's watchers (a
        # repeat is harmless: events are states).
        changes = self._inflight + self._pending
        self._inflight, self._pending, self._joining = [], [], False
        for change in changes:
            self._deliver(change)
        if not self.up:
            if self._down_since is None and self._joined.is_set():
                self._down_since = time.monotonic()
            return
        self.up = False
        self._down_since = time.monotonic()
        self.metrics.redis_up.set(0)
        log.warning(
            "Redis failed (%s): presence is local to this process until it is back; "
            "notifications are not affected",
            exc or type(exc).__name__,
        )
