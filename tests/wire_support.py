# A WebSocket client on a bare TCP socket, for byte-level tests of the connection edge: it
# sends any bytes (valid frames, invalid ones, floods), reads only when told to (through a
# small receive buffer, so that what it does not read stays with the server), and records what
# the server sent: every frame, the close frame, and how the connection ended (EOF or reset).
from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson
from protocol_schema import validate_server_frame

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """The bytes of one client frame, any opcode, length and flags (valid or not)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    if n < 126:
        length = bytes([n])
    elif n < 1 << 16:
        length = bytes([126]) + n.to_bytes(2, "big")
    else:
        length = bytes([127]) + n.to_bytes(8, "big")
    if not mask:
        return head + length + payload
    key = os.urandom(4)
    body = (
        int.from_bytes(payload, "little") ^ int.from_bytes((key * (n // 4 + 1))[:n], "little")
    ).to_bytes(n, "little")
    return head + bytes([length[0] | 0x80]) + length[1:] + key + body


def text(value: Any) -> bytes:
    return frame(TEXT, orjson.dumps(value))


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return frame(CLOSE, code.to_bytes(2, "big") + reason.encode())


class WireClient:
    """One connection. `frames` holds (opcode, payload) of every server frame read; `texts` the
    decoded text frames (schema-validated); `close_code` the first close frame's code."""

    def __init__(
        self, sock: socket.socket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.sock, self.reader, self.writer = sock, reader, writer
        self.status = 0
        self.head = b""
        self.frames: list[tuple[int, bytes]] = []
        self.texts: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.eof = False
        self.reset = False
        self.read_bytes = 0
        self._buffer = bytearray()

    @classmethod
    async def open(
        cls,
        port: int,
        query: str = "",
        rcvbuf: int | None = 4096,
        version: str = "13",
        expect: int = 101,
    ) -> WireClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: it sets the window offered to the server
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # limit: the StreamReader itself stops pulling from the socket after a few kB
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        client = cls(sock, reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: {version}\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in client._buffer:
                data = await reader.read(4096)
                assert data, bytes(client._buffer)
                client._buffer += data
        end = client._buffer.index(b"\r\n\r\n") + 4
        client.head = bytes(client._buffer[:end])
        del client._buffer[:end]
        client.status = int(client.head.split(b" ", 2)[1])
        assert client.status == expect, client.head
        client._parse()
        return client

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_some(self, size: int = 65536) -> int:
        """Read what is there (up to `size`); 0 at the end of the connection."""
        try:
            data = await self.reader.read(size)
        except (ConnectionResetError, BrokenPipeError):  # a reset, seen reading or writing
            data, self.reset = b"", True
        if not data:
            self.eof = True
            return 0
        self.read_bytes += len(data)
        self._buffer += data
        self._parse()
        return len(data)

    async def read_until(
        self,
        predicate: Callable[[WireClient], bool],
        timeout: float,
        size: int = 65536,
        pause: float = 0.0,
    ) -> None:
        """Read until `predicate` holds or the connection ends; `pause` between reads makes a
        slow reader."""
        async with asyncio.timeout(timeout):
            while not self.eof and not predicate(self):
                await self.read_some(size)
                if pause:
                    await asyncio.sleep(pause)

    async def read_to_end(self, timeout: float, size: int = 65536, pause: float = 0.0) -> None:
        await self.read_until(lambda c: False, timeout, size, pause)

    def _parse(self) -> None:
        buf = self._buffer
        while len(buf) >= 2:
            opcode, second = buf[0] & 0x0F, buf[1]
            assert not second & 0x80, "a server frame is never masked"
            n, at = second & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, at = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, at = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < at + n:
                return
            assert buf[0] & 0x80, "the server does not fragment"
            payload = bytes(buf[at : at + n])
            del buf[: at + n]
            self.frames.append((opcode, payload))
            if opcode == TEXT:
                value = orjson.loads(payload)
                validate_server_frame(value)
                self.texts.append(value)
            elif opcode == CLOSE and self.close_code is None:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005

    @property
    def local_port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def abort(self) -> None:
        """Reset the connection (RST), as a client that vanishes does."""
        transport = self.writer.transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def close(self) -> None:
        self.writer.close()


def server_sockets(server_port: int, client_port: int) -> list[tuple[str, int]]:
    """(state, bytes in the send queue) of the kernel sockets on the server's side of the
    connection from `client_port` (/proc/net/tcp): none once it is gone, reset included."""
    found = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if (
                int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                found.append((TCP_STATES.get(state, state), int(queues.split(":")[0], 16)))
    return found


TCP_STATES = {
    "01": "ESTABLISHED",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0B": "CLOSING",
}
