"""Helpers for the fault, slow-consumer and property tests: plain HTTP probes, a notifyd
subprocess that can be killed, a raw sans-I/O WebSocket client whose reads the test controls,
and a device (notifyd.client's loop) audited for every duplicate, gap or misordered item."""

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
from support import ROOT, SECRET, http_request, notifyd_cmd, subprocess_env
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.uri import parse_uri

from notifyd.client import NotifydClient, Observer, SyncRequest
from notifyd.core.auth import issue_token
from notifyd.core.codes import ErrorCode

# The codes an error frame may carry that a hostile client may provoke: internal-error is one
# too, but a test that provokes it has found a bug (and too-many-requests is HTTP's alone).
DOCUMENTED_ERRORS = frozenset(
    code.value
    for code in ErrorCode
    if code.frame and code not in (ErrorCode.INTERNAL_ERROR, ErrorCode.TOO_MANY_REQUESTS)
)


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


# -- a client that reconnects and syncs, audited -----------------------------------------------


class CursorClient(Observer):
    """One device: notifyd.client's loop (?sync=1, sync from its cursors on every connect,
    paging on hasMore, reconnect), audited through its hooks. Per stream it keeps:

    - `accepted`: the items in the order they came: each sync-response's items, then live
      `notification:new` frames after the last page. Over the whole run this must be 1, 2,
      3... with nothing twice, nothing missing.
    - `violations`: every item delivered twice, out of order or after a gap, every live item
      before the first sync-response (?sync=1 promises none), and every foreign stream.
      With hasMore, streams that had no more go live at once, before the next page.
    """

    def __init__(self, port: int, user: str, roles: list[str], limit: int) -> None:
        self.port, self.user, self.roles, self.limit = port, user, roles, limit
        self.cursors: dict[str, int] = {}  # as the audit sees them (the client keeps its own)
        self.have: dict[str, set[int]] = {}
        self.accepted: dict[str, list[int]] = {}
        self.violations: list[str] = []
        self.trace: collections.deque[str] = collections.deque(maxlen=40)
        self.context: list[str] = []  # the trace when the first violation was found
        self.pages_with_more = 0
        self.responded = False  # a sync-response came on this connection
        self.streams: set[str] = set()
        self.client = NotifydClient(
            f"ws://127.0.0.1:{port}",
            issue_token(SECRET, user, roles, 3600),
            # cursors from the start: everything after seq 0, not a stream's latest items
            cursors=dict.fromkeys([f"user:{user}", *(f"role:{r}" for r in roles), "all"], 0),
            backoff_base=0.05,  # the daemon is down: retry soon
            backoff_cap=0.2,
            quick=0.05,
            sync_limit=limit,
            observer=self,
            connect_options={"open_timeout": 5, "ping_interval": None},
        )
        self.task: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        return self.client.connections

    @property
    def synced(self) -> bool:
        return self.client.synced

    def start(self) -> None:
        async def run() -> None:
            async for _event in self.client.events():
                pass

        self.task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        await self.client.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)

    def caught_up(self, last: dict[str, int]) -> bool:
        return self.synced and all(self.cursors.get(s, 0) >= last.get(s, 0) for s in self.streams)

    # -- the hooks ----------------------------------------------------------------------------

    def opened(self) -> None:
        self.responded = False

    def confirmed(self, streams: frozenset[str]) -> None:
        self.streams = set(streams)
        for stream in streams:
            self.cursors.setdefault(stream, 0)
            self.have.setdefault(stream, set())
            self.accepted.setdefault(stream, [])

    def sync_sent(self, request: SyncRequest) -> None:
        self.trace.append(f"request {request.cursors}")

    def error(self, data: dict[str, Any], ref: str | None) -> None:
        self.violations.append(f"error frame {data}")

    def sync_received(self, request: SyncRequest | None, data: dict[str, Any]) -> None:
        self.responded = True
        if request is None:
            self.violations.append("a sync-response that answers no pending sync-request")
            return
        sent = request.cursors
        self.trace.append(
            f"response {sent} -> {data['cursors']} "
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
            cursor = data["cursors"][stream]
            seqs = by_stream.get(stream, [])
            if any(q <= sent[stream] for q in seqs) or len(set(seqs)) != len(seqs):
                self.violations.append(
                    f"duplicate in {stream} sync: {seqs} after cursor {sent[stream]}"
                )
            if seqs != sorted(seqs) or (seqs and seqs[-1] > cursor):
                self.violations.append(f"{stream} sync out of order: {seqs}, cursor {cursor}")
            # a stream another page did not wait for went live after the previous page: the
            # request's cursor (the previous response's) may be behind what arrived since
            base = max(sent[stream], self.cursors[stream])
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

    def live(self, notification: dict[str, Any]) -> None:
        stream, seq = notification["stream"], notification["seq"]
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
