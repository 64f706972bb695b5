"""The servers notifyd is measured against (bench/peers/): what teams build today for the same
path from a committed row to the user's devices. Installs their dependencies from the
registries (npm, PyPI) into bench/.peers/ (git-ignored) on first use, and runs each like
infra.Daemon, so that run.py's scenarios and load generator apply to them unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra import BenchError, Daemon, child_env, free_port, say

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "peers"
INSTALLED = HERE / ".peers"
READY_LINE = "listening on"
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@dataclass(frozen=True)
class PeerKind:
    name: str
    title: str  # as shown in tables
    protocol: str  # what ws_clients speaks to it


PEERS = {
    "socketio-node": PeerKind("socketio-node", "Socket.IO 4 (Node)", "socketio"),
    "socketio-py": PeerKind("socketio-py", "python-socketio", "socketio"),
}


def install(name: str) -> dict[str, str]:
    """Install a peer's dependencies unless they are there; returns its versions."""
    if name == "socketio-node":
        target = INSTALLED / "socketio-node"
        if not (target / "node_modules" / "socket.io" / "package.json").exists():
            say("installing the Node Socket.IO peer's dependencies (npm ci)")
            target.mkdir(parents=True, exist_ok=True)
            for f in ("package.json", "package-lock.json"):
                shutil.copy(SOURCES / "socketio-node" / f, target / f)
            _run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(target)], 600)
        node = _run(["node", "--version"], 30).strip()
        pkg = json.loads((target / "node_modules/socket.io/package.json").read_text())
        return {"node": node, "socket.io": pkg["version"]}
    if name == "socketio-py":
        venv = INSTALLED / "socketio-py" / "venv"
        python = venv / "bin" / "python"
        probe = "import socketio, aiohttp, asyncpg, jwt, uvloop"
        if (
            not python.exists()
            or subprocess.run([str(python), "-c", probe], capture_output=True).returncode
        ):
            say("installing the python-socketio peer's dependencies (pip)")
            _run([sys.executable, "-m", "venv", "--clear", str(venv)], 120)
            _run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "-r",
                    str(SOURCES / "socketio_py" / "requirements.txt"),
                ],
                600,
            )
        versions = _run(
            [
                str(python),
                "-c",
                "import importlib.metadata as m, json; print("
                "json.dumps({p: m.version(p) for p in ('python-socketio', "
                "'python-engineio', 'aiohttp')}))",
            ],
            60,
        )
        return dict(json.loads(versions))
    raise ValueError(f"unknown peer {name!r}")


def _run(cmd: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{cmd[0]} failed: {exc}") from exc
    if done.returncode:
        raise BenchError(
            f"{' '.join(cmd[:3])} exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-1500:]}"
        )
    return done.stdout


class Peer(Daemon):
    """A peer server as a subprocess, with infra.Daemon's interface (pid, url, RSS, log)."""

    def __init__(self, kind: PeerKind, dsn: str, secret: str, workdir: Path) -> None:
        self.kind = kind
        self.name = kind.name
        self.port = free_port()
        self.log_path = workdir / f"{kind.name}.log"
        env = child_env(
            PEER_PORT=str(self.port),
            PEER_DSN=dsn,
            PEER_JWT_SECRET=secret,
            NODE_PATH=str(INSTALLED / "socketio-node" / "node_modules"),
        )
        if kind.name == "socketio-node":
            cmd = ["node", str(SOURCES / "socketio-node" / "server.js")]
        else:
            cmd = [
                str(INSTALLED / "socketio-py" / "venv" / "bin" / "python"),
                str(SOURCES / "socketio_py" / "server.py"),
            ]
        self._spawn(cmd, env)
        self.url = f"ws://127.0.0.1:{self.port}{SOCKETIO_PATH}"

    def ready(self) -> bool:
        return READY_LINE in self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        super().wait_ready(timeout)  # npm's and pip's servers take longer to start

    def stop(self, timeout: float = 5.0) -> None:
        """Its figures are taken by then: a peer slow to shut down is not waited for long."""
        super().stop(timeout)
