# notifyd benchmark peer: the python-socketio (asyncio) server a Python team would write today for
# the same path as notifyd, a row committed to notifyd.notifications -> asyncpg LISTEN ->
# sio.emit(room) -> devices. JWT (HS256) auth on connect, rooms user:<sub> / role:<name> / all.
# Run: PEER_PORT=.. PEER_DSN=.. PEER_JWT_SECRET=.. \
#      bench/.peers/socketio-py/venv/bin/python bench/peers/socketio_py/server.py
import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import asyncpg
import jwt
import socketio
import uvloop
from aiohttp import web

PORT = int(os.environ.get("PEER_PORT", "3000"))
DSN = os.environ["PEER_DSN"]
SECRET = os.environ["PEER_JWT_SECRET"]
SYNC_LIMIT = 100
FETCH = "SELECT notifyd.to_wire(n)::text FROM notifyd.notifications n WHERE id = $1"
SYNC = (
    "SELECT notifyd.to_wire(n)::text AS wire FROM notifyd.notifications n"
    " WHERE n.stream = $1 AND n.seq > $2 ORDER BY n.seq LIMIT $3"
)

# No WebSocket compression option exists here: the aiohttp driver negotiates permessage-deflate
# only when a client offers it (the bench's clients do not).
sio = socketio.AsyncServer(
    async_mode="aiohttp", transports=["websocket"], cors_allowed_origins="*", http_compression=False
)
app = web.Application()
sio.attach(app)
pool: asyncpg.Pool


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
    token = auth.get("token") if isinstance(auth, dict) else None
    token = token or parse_qs(environ.get("QUERY_STRING", "")).get("token", [""])[0]
    try:
        claims = jwt.decode(
            token, SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]}
        )
    except jwt.PyJWTError:
        raise socketio.exceptions.ConnectionRefusedError("unauthorized") from None
    user_id = claims["sub"]
    roles = [r.lower() for r in claims.get("roles") or [] if isinstance(r, str)]
    streams = [f"user:{user_id}", *(f"role:{r}" for r in roles), "all"]
    for room in streams:
        await sio.enter_room(sid, room)
    await sio.save_session(sid, {"user_id": user_id, "roles": roles, "streams": streams})
    # An emit from inside connect would go out before the CONNECT ack: send it once we return.
    sio.start_background_task(confirm, sid, user_id, roles)


async def confirm(sid: str, user_id: str, roles: list[str]) -> None:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    await sio.emit(
        "connection-confirmed",
        {
            "userId": user_id,
            "roles": roles,
            "connectionId": sid,
            "serverTime": now,
            "protocolVersion": 1,
        },
        to=sid,
    )


@sio.on("notification:sync-request")
async def sync_request(sid: str, data: Any = None) -> dict[str, Any]:
    """Catch-up after a reconnect: what follows the client's cursor, per stream it may read."""
    given = data.get("cursors") if isinstance(data, dict) else None
    given = given if isinstance(given, dict) else {}
    session = await sio.get_session(sid)
    notifications: list[dict[str, Any]] = []
    cursors: dict[str, int] = {}
    try:
        async with pool.acquire() as conn:
            for stream in session["streams"]:
                after = given.get(stream)
                after = after if isinstance(after, int) and after > 0 else 0
                rows = await conn.fetch(SYNC, stream, after, SYNC_LIMIT)
                batch = [json.loads(row["wire"]) for row in rows]
                notifications += batch
                cursors[stream] = batch[-1]["seq"] if batch else after
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"sync failed: {exc}", file=sys.stderr)
        return {"error": "sync failed"}
    reply = {"notifications": notifications, "cursors": cursors}
    # The return value is the ack when the client asked for one; without an ack id it is dropped,
    # so the reply also goes out as an event.
    await sio.emit("notification:sync-response", reply, to=sid)
    return reply


async def deliver(queue: asyncio.Queue[str]) -> None:
    """One consumer, so rooms hear of rows in commit order, by-reference fetches included."""
    while True:
        payload = await queue.get()
        try:
            # <64 hex digits of signature><body>: the body's events, taken on trust (see README)
            for event in json.loads(payload[64:])["e"]:
                if event.get("k") != "n":
                    continue  # read, deleted, count and other events: not part of this peer
                n = event.get("n")
                if n is None:  # too large for a NOTIFY payload: fetch the row
                    wire = await pool.fetchval(FETCH, event["id"])
                    if wire is None:
                        continue  # deleted before we got to it
                    n = json.loads(wire)
                await sio.emit("notification:new", {"notification": n}, room=n["stream"])
        except (OSError, ValueError, KeyError, asyncpg.PostgresError) as exc:
            print(f"delivery failed: {exc}", file=sys.stderr)


async def main() -> int:
    global pool
    try:
        pool = await asyncpg.create_pool(DSN)
        listener = await asyncpg.connect(DSN)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"startup failed: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[int] = loop.create_future()

    def finish(code: int) -> None:
        if not stop.done():
            stop.set_result(code)

    queue: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("notifyd", lambda _c, _p, _ch, payload: queue.put_nowait(payload))
    # Without LISTEN this server delivers nothing: fail loudly and let the supervisor restart it.
    listener.add_termination_listener(lambda _c: finish(1))
    consumer = asyncio.create_task(deliver(queue))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish, 0)
    print(f"listening on {PORT}", flush=True)

    code = await stop
    if code:
        print("LISTEN connection lost", file=sys.stderr)
    await sio.shutdown()
    if sio.eio.sockets:  # Engine.IO close to every client; aiohttp then waits ~2 s at most
        await sio.eio.disconnect()
    await runner.cleanup()
    consumer.cancel()
    listener.terminate()
    await pool.close()
    return code


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
