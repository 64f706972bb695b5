# Helpers for the fault, slow-consumer and property tests: plain HTTP probes, a notifyd
# subprocess that can be killed, a raw sans-I/O WebSocket client whose reads the test controls,
# and a reconnecting client that follows protocol/README.md §7 and counts every duplicate or gap.
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from protocol_schema import validate_server_frame
from support import ROOT, SECRET, Client, http_request, notifyd_cmd, subprocess_env
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Close, Frame, Opcode
from websockets.uri import parse_uri

from notifyd.core.auth import issue_token

DOCUMENTED_ERRORS = frozenset(
    {
        "invalid-json",
        "invalid-frame",
        "unknown-event",
        "invalid-data",
        "binary-not-supported",
        "not-authenticated",
        "auth-failed",
        "auth-user-mismatch",
        "forbidden",
        "sync-in-progress",
        "rate-limited",
        "unavailable",
    }
)  # internal-error is documented too, but a test that provokes it has found a bug


async def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a plain GET on the daemon's port."""
    status, _, body = await http_request(port, "GET", path, timeout=timeout)
    return status, body


async def eventually(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Wait until `predicate()` holds (a generous timeout only guards against hangs)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def logged_errors() -> Iterator[list[logging.LogRecord]]:
    """ERROR records logged meanwhile (asyncio's 'Exception in callback', notifyd's own)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


# -- a notifyd subprocess ---------------------------------------------------------------------


class ServeProcess:
    """`notifyd serve` as a real subprocess on a fixed port; logs go to a file (a pipe nobody
    reads would eventually block the daemon)."""

    def __init__(self, dsn: str, port: int, log_dir: Path, **env: str) -> None:
        self.dsn, self.port, self.log_dir, self.env = dsn, port, log_dir, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"notifyd-{self.starts}.log"

    async def start(self, timeout: float = 30) -> None:
        self.starts += 1
        env = subprocess_env(
            **{
                "NOTIFYD_DSN": self.dsn,
                "NOTIFYD_JWT_SECRET": SECRET,
                "NOTIFYD_PORT": str(self.port),
                **self.env,
            }
        )
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                notifyd_cmd("serve"),
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        shared = self.env.get("NOTIFYD_REUSE_PORT") == "1"
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"notifyd exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text()[-2000:]}"
                )
            if shared:  # /readyz may be answered by another process on the port
                if "serving on" in self.log_path.read_text():
                    return
            else:
                with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                    if (await http_get(self.port, "/readyz", timeout=1))[0] == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError("notifyd not ready in time")
            await asyncio.sleep(0.05)

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(self.proc.wait, 10) == -signal.SIGKILL

    def stop(self) -> None:
        """SIGTERM (which also lets coverage save what this process ran), else SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- a raw WebSocket client -------------------------------------------------------------------


class RawClient:
    """A sans-I/O WebSocket client over a bare socket with a small receive buffer: it reads
    only when told to, so the server's send buffer fills up. Text frames it reads are
    validated against protocol/schema/ like support.Client's."""

    def __init__(
        self, proto: ClientProtocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proto, self.reader, self.writer = proto, reader, writer
        self.frames: list[Frame] = []
        self.texts: list[dict[str, Any]] = []
        self.bytes_read = 0
        self.eof = False
        self.reset = False

    @classmethod
    async def open(cls, url: str, rcvbuf: int = 4096) -> RawClient:
        uri = parse_uri(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        # limit: the StreamReader itself stops pulling from the socket after a few kB
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        proto = ClientProtocol(uri, max_size=None)
        proto.send_request(proto.connect())
        client = cls(proto, reader, writer)
        client.flush()
        async with asyncio.timeout(10):
            while not isinstance(proto.handshake_exc, Exception) and proto.state.name != "OPEN":
                await client._read_some()
                if client.eof:
                    break
        assert proto.state.name == "OPEN", proto.handshake_exc
        return client

    def flush(self) -> None:
        for chunk in self.proto.data_to_send():
            if chunk:
                self.writer.write(chunk)

    async def _read_some(self) -> None:
        try:
            data = await self.reader.read(65536)
        except ConnectionResetError:
            data, self.reset = b"", True
        if not data:
            self.eof = True
            self.proto.receive_eof()
            return
        self.bytes_read += len(data)
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if not isinstance(event, Frame):  # the handshake's Response
                continue
            self.frames.append(event)
            if event.opcode is Opcode.TEXT:
                frame = orjson.loads(event.data)
                validate_server_frame(frame)
                self.texts.append(frame)

    async def read_frames_until(
        self, predicate: Callable[[RawClient], bool], timeout: float
    ) -> None:
        async with asyncio.timeout(timeout):
            while not self.eof and not predicate(self):
                await self._read_some()

    async def read_to_end(self, timeout: float) -> None:
        """Read until the server's EOF (or a reset)."""
        async with asyncio.timeout(timeout):
            while not self.eof:
                await self._read_some()

    @property
    def close_frame(self) -> Close | None:
        for frame in self.frames:
            if frame.opcode is Opcode.CLOSE:
                return Close.parse(frame.data)
        return None

    def close(self) -> None:
        self.writer.close()


# -- a client that reconnects and syncs as protocol/README.md §7 says -------------------------


class CursorClient:
    """One device: connects with ?sync=1, reconnects whenever its connection drops, syncs from
    its cursors on every connect (paging on hasMore with the response's cursors), and keeps per
    stream:

    - `accepted`: the items in the order they came: each sync-response's items, then live
      `notification:new` frames after the last page. Over the whole run this must be 1, 2,
      3... with nothing twice, nothing missing.
    - `violations`: every item delivered twice, out of order or after a gap, every live item
      before the first sync-response (?sync=1 promises none), and every foreign stream.
      With hasMore, streams that had no more go live at once, before the next page.
    """

    def __init__(self, port: int, user: str, roles: list[str], limit: int) -> None:
        self.port, self.user, self.roles, self.limit = port, user, roles, limit
        self.cursors: dict[str, int] = {}
        self.have: dict[str, set[int]] = {}
        self.accepted: dict[str, list[int]] = {}
        self.violations: list[str] = []
        self.trace: collections.deque[str] = collections.deque(maxlen=40)
        self.context: list[str] = []  # the trace when the first violation was found
        self.connections = 0
        self.pages_with_more = 0
        self.synced = False
        self.responded = False  # a sync-response came on this connection
        self.streams: set[str] = set()
        self._sent: dict[str, int] = {}
        self._requests = 0
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)

    def caught_up(self, last: dict[str, int]) -> bool:
        return self.synced and all(self.cursors.get(s, 0) >= last.get(s, 0) for s in self.streams)

    async def _run(self) -> None:
        token = issue_token(SECRET, self.user, self.roles, 3600)
        url = f"ws://127.0.0.1:{self.port}/ws?sync=1&token={token}"
        while not self._stop.is_set():
            try:
                ws = await connect(url, open_timeout=5, ping_interval=None, compression=None)
            except (OSError, InvalidHandshake, TimeoutError):
                await asyncio.sleep(0.05)  # the daemon is down: retry
                continue
            self.connections += 1
            client = Client(ws)
            try:
                await self._session(client)
            except ConnectionClosed:
                self.synced = False  # killed daemon: reconnect and sync
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2)

    async def _request(self, client: Client, cursors: dict[str, int]) -> None:
        self._requests += 1
        self.trace.append(f"request {cursors}")
        self._sent = dict(cursors)
        await client.send(
            "notification:sync-request",
            {"cursors": cursors, "limit": self.limit},
            f"sync-{self._requests}",
        )

    async def _session(self, client: Client) -> None:
        self.synced = self.responded = False
        confirmed = await client.next_data("connection-confirmed", 10)
        mine = {f"user:{confirmed['userId']}", *(f"role:{r}" for r in confirmed["roles"]), "all"}
        self.streams = mine
        for stream in mine:
            self.cursors.setdefault(stream, 0)
            self.have.setdefault(stream, set())
            self.accepted.setdefault(stream, [])
        await self._request(client, {s: c for s, c in self.cursors.items() if s in mine})
        while True:
            try:
                frame = await client.recv(0.2)
            except TimeoutError:
                if self._stop.is_set():
                    return
                continue
            kind, data = frame["type"], frame["data"]
            if kind == "notification:sync-response":
                assert frame.get("ref") == f"sync-{self._requests}", frame
                await self._on_sync_response(client, data)
            elif kind == "notification:new":
                self._on_new(data["notification"])
            elif kind == "error":
                self.violations.append(f"error frame {data}")

    async def _on_sync_response(self, client: Client, data: dict[str, Any]) -> None:
        self.responded = True
        self.trace.append(
            f"response {self._sent} -> {data['cursors']} "
            f"{[(n['stream'], n['seq']) for n in data['notifications']]}"
        )
        if data["reset"]:
            self.violations.append(f"unexpected reset {data['reset']}")
        by_stream: dict[str, list[int]] = {}
        for n in data["notifications"]:
            by_stream.setdefault(n["stream"], []).append(n["seq"])
        for stream in by_stream.keys() - self.streams:
            self.violations.append(f"foreign stream {stream} in a sync-response")
        for stream in data["cursors"].keys() - self.streams:
            self.violations.append(f"foreign stream {stream} in cursors")
        for stream in self.streams:
            sent, cursor = self._sent[stream], data["cursors"][stream]
            seqs = by_stream.get(stream, [])
            if any(q <= sent for q in seqs) or len(set(seqs)) != len(seqs):
                self.violations.append(f"duplicate in {stream} sync: {seqs} after cursor {sent}")
            if seqs != sorted(seqs) or (seqs and seqs[-1] > cursor):
                self.violations.append(f"{stream} sync out of order: {seqs}, cursor {cursor}")
            # a stream another page did not wait for went live after the previous page: the
            # request's cursor (the previous response's) may be behind what arrived since
            base = max(sent, self.cursors[stream])
            if seqs != list(range(base + 1, cursor + 1)):
                self.context = self.context or list(self.trace)
                self.violations.append(
                    f"{stream} sync after cursor {base} gave {seqs}, "
                    f"cursor {cursor}: not exactly the items in between"
                )
            self.have[stream].update(seqs)
            self.accepted[stream].extend(seqs)
            self.cursors[stream] = cursor
        if data["hasMore"]:
            self.pages_with_more += 1
            await self._request(client, dict(data["cursors"]))  # as the README's loop does
        else:
            self.synced = True

    def _on_new(self, n: dict[str, Any]) -> None:
        stream, seq = n["stream"], n["seq"]
        self.trace.append(f"live {stream} {seq}")
        if stream not in self.streams:
            self.violations.append(f"foreign stream {stream} delivered live")
            return
        if not self.responded:
            self.violations.append(f"live {stream} seq {seq} before the sync-response")
            return
        cursor = self.cursors[stream]
        if seq <= cursor:
            self.violations.append(
                f"duplicate {stream} seq {seq} live after sync (cursor {cursor})"
            )
            return
        if seq != cursor + 1:
            self.violations.append(f"gap in {stream} live: {cursor} then {seq}")
        self.cursors[stream] = seq
        self.have[stream].add(seq)
        self.accepted[stream].append(seq)
