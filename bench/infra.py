"""Bench plumbing that is no scenario: PostgreSQL (a given server or an embedded one), the daemon
subprocess, load-generator processes behind pipes (both ends), raw client sockets, and /proc
readings (RSS, CPU). Every bench script starts its daemons, databases and workers here."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from notifyd.core.settings import without_password

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
ADMIN_TIMEOUT = 60.0
EMBEDDED_START_TIMEOUT = 180.0


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which one and why."""


def say(message: str) -> None:
    """Progress line on stderr (stdout is kept for the summary)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- this process and its children ------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def guarded(body: Callable[[], dict[str, Any]]) -> dict[str, Any] | int:
    """A bench's body, run so that whatever happens ends in a message and an exit status:
    its results, or 130 on Ctrl-C, 1 on a failed step or a crash (the body's own cleanup has
    stopped everything by then). SIGTERM and SIGHUP stop it as Ctrl-C does."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        return body()
    except KeyboardInterrupt:
        say("interrupted; everything has been stopped")
        return 130
    except BenchError as exc:
        say(f"FAILED: {exc}")
        return 1
    except Exception:
        traceback.print_exc()
        say("FAILED (everything has been stopped)")
        return 1


def git_head() -> str:
    """The commit being measured, for the results file."""
    try:
        return subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def postgres_source() -> str:
    """Where bench_database puts its database, for the results' meta."""
    return "NOTIFYD_BENCH_DSN" if os.environ.get("NOTIFYD_BENCH_DSN") else "embedded"


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; children inherit it. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (a bench killed with -9
    must not leave a daemon or a load generator behind). Harmless where unsupported."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- raw client sockets ------------------------------------------------------------------------


def upgrade_request(path: str) -> bytes:
    """A WebSocket upgrade request for `path` (e.g. "/ws?token=..."), to send on a raw socket."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def stalled_socket(port: int) -> socket.socket:
    """A socket that will not read: a 4 KB receive window (set before connect), so the server
    holds the rest."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


# -- /proc -------------------------------------------------------------------------------------


def fd_limit_of(pid: int) -> int | None:
    """The soft open-file limit of a process (from /proc)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def status_kb(pid: int, field: str) -> int | None:
    """A KB field of /proc/<pid>/status (VmRSS, VmHWM: the peak RSS), None when unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) in KB."""
    kb = status_kb(pid, "VmRSS")
    if kb is None:
        raise BenchError(f"no VmRSS for pid {pid}")
    return kb


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: [0] is field 3 (state)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, in seconds (CLK_TCK resolution, usually 10 ms)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def oncpu_seconds(pid: int) -> float:
    """Time on CPU of all the process's threads from schedstat: nanosecond resolution."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


_server: dict[str, int] = {}  # "postmaster": the pid of bench_database's server, when local


def server_pid() -> int | None:
    """The postmaster of bench_database's server, when it runs on this host (embedded, or a
    server whose backends are processes here); None when it is elsewhere or not started."""
    return _server.get("postmaster")


def _parent(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def _reaped_seconds(pid: int) -> float:
    """CPU of the process's children that have exited (cutime + cstime)."""
    fields = _stat_fields(pid)
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def _server_processes(postmaster: int) -> dict[int, float]:
    """Time on CPU of the server and of each of its processes, by pid."""
    out = {postmaster: oncpu_seconds(postmaster)}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if _parent(int(proc.name)) == postmaster:
                    out[int(proc.name)] = oncpu_seconds(int(proc.name))
    return out


class CpuMeter:
    """CPU used by a set of processes over a window, as a fraction of one core; with `server`
    (a postmaster's pid), also that PostgreSQL server's, as "PostgreSQL": each of its processes
    over the window (one that started within it, all of its time), and those that ended within
    it, all of theirs (from the postmaster's count of its children that exited)."""

    def __init__(self, pids: dict[str, int], server: int | None = None) -> None:
        self.pids = pids
        self.server = server
        self._start: dict[str, float] = {}
        self._server_start: dict[int, float] = {}
        self._reaped_start = 0.0
        self._wall = 0.0
        self.seconds: dict[str, float] = {}  # CPU seconds of the last window

    def start(self) -> None:
        self._wall = time.monotonic()
        self._start = {name: oncpu_seconds(pid) for name, pid in self.pids.items()}
        if self.server is not None:
            self._server_start = _server_processes(self.server)
            self._reaped_start = _reaped_seconds(self.server)

    def stop(self) -> dict[str, float]:
        """Fractions of one core; the CPU seconds themselves are left in `self.seconds`."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        self.seconds = {
            name: oncpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()
        }
        if self.server is not None:
            start = self._server_start
            running = _server_processes(self.server)
            ended = max(0.0, _reaped_seconds(self.server) - self._reaped_start)
            self.seconds["PostgreSQL"] = ended + sum(
                used - start.get(pid, 0.0) for pid, used in running.items()
            )
        return {name: round(used / wall, 3) for name, used in self.seconds.items()}


# -- PostgreSQL ---------------------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    """The same server URL pointing at database `name` (a socket host may be in the query)."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def execute(dsn: str, *statements: str) -> None:
    """The statements, in order, on one fresh connection, bounded in time."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close(timeout=5)

    asyncio.run(asyncio.wait_for(run(), ADMIN_TIMEOUT))


async def admin_values(dsn: str, *statements: str, timeout: float = 300) -> list[Any]:
    """Each statement's first value (None for a CHECKPOINT the role may not run)."""
    conn = await asyncpg.connect(dsn, timeout=60)
    out: list[Any] = []
    try:
        for statement in statements:
            try:
                out.append(await conn.fetchval(statement, timeout=timeout))
            except asyncpg.InsufficientPrivilegeError:
                out.append(None)
    finally:
        await conn.close()
    return out


def fresh_database(server: str, name: str) -> str:
    """Database `name` on `server`, created afresh (dropped first if there); returns its URL."""
    execute(server, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    return with_database(server, name)


def drop_database(server: str, name: str) -> None:
    execute(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def bench_database() -> Iterator[str]:
    """A fresh database `notifyd_bench_<pid>` on $NOTIFYD_BENCH_DSN, else on an embedded server
    started in a temporary directory; yields its URL and removes everything afterwards."""
    name = f"notifyd_bench_{os.getpid()}"
    with contextlib.ExitStack() as stack:
        server = os.environ.get("NOTIFYD_BENCH_DSN")
        if server:
            say(f"using the PostgreSQL server of NOTIFYD_BENCH_DSN ({without_password(server)})")
        else:
            tmp = Path(tempfile.mkdtemp(prefix="notifyd-bench-pg-"))
            tmp.chmod(0o755)  # when run as root, the embedded server runs as another user
            stack.callback(shutil.rmtree, tmp, True)
            say(f"starting an embedded PostgreSQL in {tmp}")
            handle, server = start_embedded(tmp, EMBEDDED_START_TIMEOUT)
            stack.callback(quietly, "stopping the embedded PostgreSQL", handle.cleanup)
        try:
            url = fresh_database(server, name)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise BenchError(
                f"cannot create database {name} on {without_password(server)}: {exc!r}"
            ) from None
        stack.callback(quietly, f"dropping database {name}", drop_database, server, name)
        postmaster = _local_postmaster(url)
        if postmaster is not None:
            _server["postmaster"] = postmaster
            stack.callback(_server.clear)
        yield url


def _local_postmaster(url: str) -> int | None:
    """The postmaster of the server at `url` when its backend is a process on this host."""

    async def backend_parent() -> int:
        conn = await asyncpg.connect(url, timeout=30)
        try:
            pid: int = await conn.fetchval("SELECT pg_backend_pid()")
            # (read while that backend lives)
            local = Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
            return _parent(pid) if local else 0
        finally:
            await conn.close(timeout=5)

    try:
        parent = asyncio.run(asyncio.wait_for(backend_parent(), ADMIN_TIMEOUT))
    except (OSError, ValueError):
        return None
    return parent or None


def start_embedded(data_dir: Path, timeout: float) -> tuple[Any, str]:
    """notifyd.devserver.start_postgres, bounded in time (it has unbounded waits inside):
    run in a daemon thread; on Ctrl-C meanwhile, a server that still comes up is stopped."""
    from notifyd.devserver import start_postgres

    # platformdirs warns about a missing XDG_RUNTIME_DIR and copes; say nothing
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    box: dict[str, Any] = {}

    def start() -> None:
        try:
            box["server"] = start_postgres(data_dir)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=start, name="embedded-postgres", daemon=True)
    thread.start()
    try:
        thread.join(timeout)
    except KeyboardInterrupt:
        thread.join(30)
        if "server" in box:
            quietly("stopping the embedded PostgreSQL", box["server"][0].cleanup)
        raise
    if thread.is_alive():
        raise BenchError(f"the embedded PostgreSQL did not start within {timeout:.0f} s")
    if "error" in box:
        raise BenchError(f"cannot start the embedded PostgreSQL: {box['error']!r}")
    handle, dsn, _psql = box["server"]
    return handle, dsn


def quietly(what: str, fn: Callable[..., object], *args: Any) -> None:
    """Clean-up step: report a failure, never raise (the other steps must still run)."""
    try:
        fn(*args)
    except Exception as exc:
        say(f"warning: {what} failed: {exc!r}")


def notifyd_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("notifyd")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "notifyd", *args]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for notifyd subprocesses: no stray NOTIFYD_* from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYD_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def sibling_database(dsn: str, suffix: str) -> Iterator[str]:
    """Another fresh database on the server of `dsn` (bench_database's), removed afterwards."""
    name = f"{urlsplit(dsn).path.lstrip('/')}_{suffix}"
    url = fresh_database(dsn, name)
    try:
        yield url
    finally:
        quietly(f"dropping database {name}", drop_database, dsn, name)


def export_tree(rev: str, target: Path) -> str:
    """The repository's files at `rev` (a commit, tag or branch) under `target`; returns the
    commit's full hash."""
    top = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(top), "rev-parse", "--verify", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        target.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(top), "archive", commit], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"cannot export {rev!r}: {exc}") from None
    return commit


def migrate(dsn: str, **env: str) -> None:
    """`notifyd migrate`; `env`: more of the environment (PYTHONPATH for another tree)."""
    result = subprocess.run(
        notifyd_command("migrate"),
        env=child_env(NOTIFYD_DSN=dsn, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(
            f"notifyd migrate exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    say(result.stdout.strip())


# -- the daemon ---------------------------------------------------------------------------------


class Daemon:
    """`notifyd serve` as a subprocess in its own session (Ctrl-C reaches only the bench,
    which stops the daemon itself), its log (stdout and stderr: JSON lines) in a file."""

    name = "notifyd"

    def __init__(
        self,
        dsn: str,
        secret: str,
        workdir: Path,
        log_level: str = "WARNING",
        port: int | None = None,
        shared_log: Path | None = None,
        **settings: str,
    ) -> None:
        """A fresh port and log unless given: `shared_log` is appended to (one log for the
        successive instances of a run)."""
        self.port = port or free_port()
        self.log_path = shared_log or workdir / "notifyd.log"
        env = child_env(
            NOTIFYD_DSN=dsn,
            NOTIFYD_JWT_SECRET=secret,
            NOTIFYD_HOST="127.0.0.1",
            NOTIFYD_PORT=str(self.port),
            NOTIFYD_LOG_LEVEL=log_level,
            **settings,
        )
        self._spawn(notifyd_command("serve"), env, append=shared_log is not None)
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def _spawn(self, cmd: list[str], env: dict[str, str], append: bool = False) -> None:
        """Start the server in its own session, stdout and stderr into self.log_path."""
        with self.log_path.open("ab" if append else "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.pid = self.proc.pid

    def ready(self) -> bool:
        return self._get("/readyz") == 200

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def _get(self, path: str) -> int | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited {self.proc.returncode} during the bench:\n{self.log_tail()}"
            )

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log but INFO and DEBUG records (at INFO the daemon logs
        every connection): what explains an exit."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        kept = [line for line in text.splitlines() if not chatter(line)]
        return "\n".join(kept[-lines:]) or "(nothing above INFO in the log)"

    def log_size(self) -> int:
        """Bytes in the log so far: an offset for `log_since`."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> tuple[list[str], int]:
        """The complete lines written after byte `offset`, and the offset after them."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return [], offset
        end = data.rfind(b"\n") + 1  # a line being written stays for the next call
        return data[:end].decode(errors="replace").splitlines(), offset + end

    def warnings(self, limit: int = 50) -> list[str]:
        """Log lines at WARNING and above, and any line that is no JSON log record (a
        traceback, something written by a C library): INFO lines are the bench's business."""
        lines, _ = self.log_since(0)
        return [line for line in lines if line.strip() and not chatter(line)][:limit]

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop on SIGTERM within {timeout:g} s; killing it")
            self.proc.kill()
            self.proc.wait(5)


def chatter(line: str) -> bool:
    """Whether a daemon log line is an INFO or DEBUG JSON record."""
    if not line.startswith("{"):
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("level") in ("debug", "info")


# -- load-generator processes -------------------------------------------------------------------

Handler = Callable[[str, Sequence[Any]], Awaitable[Any]]


class Worker:
    """A load-generator process (multiprocessing, spawn context) that answers commands sent
    over a pipe; every wait for an answer is bounded and notices a dead process."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.sent = 0  # commands sent; answers carry their command's number

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, command: str, *args: Any) -> None:
        self.sent += 1
        self.pipe.send((self.sent, command, args))

    def receive(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self.pipe.poll(0.2):
            if not self.proc.is_alive():
                raise BenchError(f"{self.name} died (exit code {self.proc.exitcode})")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} gave no answer within {timeout:.0f} s")
        while True:
            number, status, value = self.pipe.recv()
            if number == self.sent:
                break
            # the late answer to a command whose wait timed out: not this command's
            if not self.pipe.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"{self.name} gave no answer within {timeout:.0f} s")
        if status != "ok":
            raise BenchError(f"{self.name} failed:\n{value}")
        return value

    def call(self, command: str, *args: Any, timeout: float) -> Any:
        self.send(command, *args)
        return self.receive(timeout)

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.send("exit")
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)
        self.pipe.close()


def worker_setup() -> None:
    """First thing in a load-generator process: Ctrl-C is the bench's business (it stops us),
    and we go when the bench goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)


async def command_loop(pipe: Pipe, handle: Handler) -> None:
    """The worker side of the pipe: run each command, answer ("ok", value) or ("error", text).
    Ends on "exit" or when the bench's end of the pipe closes."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            number, command, args = await loop.run_in_executor(None, pipe.recv)
        except (EOFError, OSError):
            return
        if command == "exit":
            return
        try:
            pipe.send((number, "ok", await handle(command, args)))
        except Exception:
            pipe.send((number, "error", traceback.format_exc()))
