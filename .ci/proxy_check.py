#!/usr/bin/env python3
# Checks the TLS proxy configurations shipped in systemd/ (nginx.conf, Caddyfile) as
# docs/operations.md tells operators to use them: a self-signed certificate, `notifyd dev`
# behind each proxy, and a real client over wss:// that gets a notification, the polling API
# over https://, and the internal routes (/metrics, /readyz) kept off the public side. Needs
# nginx and caddy (.ci/run installs them). Run: .venv/bin/python .ci/proxy_check.py
from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
SITE = "notify.example.com"
_getaddrinfo = socket.getaddrinfo


def _resolve_site(host: object, *args: object, **kwargs: object) -> object:
    """The site's name points at this host, for this process only (no /etc/hosts edit)."""
    return _getaddrinfo("127.0.0.1" if host == SITE else host, *args, **kwargs)  # type: ignore


socket.getaddrinfo = _resolve_site  # type: ignore[assignment]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SITE)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(SITE), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def nginx(work: Path, cert: Path, key: Path, port: int, upstream: int) -> list[str]:
    site = (ROOT / "systemd" / "nginx.conf").read_text()
    site = (
        site.replace("listen 443 ", f"listen {port} ")
        .replace("listen [::]:443 ", f"listen [::1]:{port} ")
        .replace(f"/etc/letsencrypt/live/{SITE}/fullchain.pem", str(cert))
        .replace(f"/etc/letsencrypt/live/{SITE}/privkey.pem", str(key))
        .replace("/var/log/nginx/", f"{work}/")
        .replace("127.0.0.1:8765", f"127.0.0.1:{upstream}")
    )
    (work / "site.conf").write_text(site)
    (work / "nginx.conf").write_text(
        f"user root;\npid {work}/nginx.pid;\nerror_log {work}/error.log;\n"
        "events {}\n"
        f"http {{\n  access_log {work}/access.log;\n"
        f"  client_body_temp_path {work}/body;\n  proxy_temp_path {work}/proxy;\n"
        f"  include {work}/site.conf;\n}}\n"
    )
    return ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-g", "daemon off;"]


def caddy(work: Path, cert: Path, key: Path, port: int, upstream: int) -> list[str]:
    site = (ROOT / "systemd" / "Caddyfile").read_text()
    site = site.replace(f"{SITE} {{", f"https://{SITE}:{port} {{\n\ttls {cert} {key}").replace(
        "127.0.0.1:8765", f"127.0.0.1:{upstream}"
    )
    (work / "Caddyfile").write_text(
        "{\n\tadmin off\n\tauto_https disable_redirects\n"
        "\tstorage file_system " + str(work / "data") + "\n}\n" + site
    )
    return ["caddy", "run", "--config", str(work / "Caddyfile"), "--adapter", "caddyfile"]


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port}")


def dev_key(banner: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """The key of this `notifyd dev` run, from the demo page's link in its banner: the dev
    helpers answer only requests that carry it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"#key=([\w-]+)", banner.read_text())
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"notifyd dev exited with {proc.returncode}")
        time.sleep(0.1)
    raise SystemExit("notifyd dev printed no demo page link")


async def check(
    name: str, cert: Path, proxy_port: int, daemon_port: int, key: str, logs: list[Path]
) -> None:
    started = time.monotonic()
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = True
    base = f"{SITE}:{proxy_port}"
    dev = {"X-Notifyd-Dev-Key": key}
    token_request = urllib.request.Request(
        f"http://127.0.0.1:{daemon_port}/dev/token?user=alice", headers=dev
    )
    with urllib.request.urlopen(token_request) as r:
        token = json.load(r)["token"]

    def https(path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"https://{base}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async with connect(f"wss://{base}/ws?token={token}", ssl=ctx, compression=None) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "connection-confirmed", first
        title = f"through {name}"
        req = urllib.request.Request(
            f"http://127.0.0.1:{daemon_port}/dev/notify?user=alice&title="
            + title.replace(" ", "+"),
            method="POST",
            headers=dev,
        )
        urllib.request.urlopen(req).close()
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "notification:new":
                    assert frame["data"]["notification"]["title"] == title, frame
                    break
    status, body = await asyncio.to_thread(
        https, "/v1/unread-count", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and json.loads(body)["count"] >= 1, (status, body)
    status, body = await asyncio.to_thread(https, "/notifyd.js")
    assert status == 200 and b"NotifydClient" in body, status
    for internal in ("/metrics", "/readyz", "/healthz", "/"):
        status, _ = await asyncio.to_thread(https, internal)
        assert status == 404, (internal, status)
    await asyncio.sleep(0.2)  # the proxy writes its access log after the response
    for log in logs:
        assert token not in log.read_text(), f"{log} holds the token"
    print(
        f"{name}: wss:// notification, https:// polling API and client, internal routes "
        f"404: ok ({time.monotonic() - started:.1f}s)",
        flush=True,
    )


def main() -> int:
    for tool in ("nginx", "caddy"):
        if shutil.which(tool) is None:
            print(
                f"proxy-check: {tool} is not installed (apt-get install nginx-light caddy)",
                file=sys.stderr,
            )
            return 1
    work = Path(tempfile.mkdtemp(prefix="notifyd-proxy-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cert, key = self_signed(work)
        daemon_port = free_port()
        with open(work / "notifyd.log", "wb") as log, open(work / "banner.txt", "wb") as out:
            daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "notifyd",
                    "dev",
                    "--data-dir",
                    str(work / "dev"),
                    "--port",
                    str(daemon_port),
                ],
                stdout=out,
                stderr=log,
                cwd=ROOT,
                env={k: v for k, v in os.environ.items() if not k.startswith("NOTIFYD_")},
            )
        procs.append(daemon)
        wait_port(daemon_port, daemon, "notifyd dev", timeout=90)
        helpers_key = dev_key(work / "banner.txt", daemon)
        for name, build in (("nginx", nginx), ("caddy", caddy)):
            directory = work / name
            directory.mkdir()
            port = free_port()
            with open(directory / "out.log", "wb") as out:
                proc = subprocess.Popen(
                    build(directory, cert, key, port, daemon_port),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=directory,
                    env={**os.environ, "HOME": str(directory)},
                )
            procs.append(proc)
            wait_port(port, proc, name)
            try:
                asyncio.run(
                    check(name, cert, port, daemon_port, helpers_key, list(directory.glob("*.log")))
                )
            except BaseException:
                for log in directory.glob("*.log"):
                    print(f"--- {log}\n{log.read_text()[-3000:]}", file=sys.stderr)
                raise
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
