#!/usr/bin/env python3
# End-to-end check of the shipped systemd units (systemd/) under a real systemd: a Debian
# bookworm guest booted with systemd-nspawn (sharing the host network), notifyd installed in it
# as docs/operations.md tells an operator (wheel into a venv at /opt/notifyd), the units copied
# unchanged but for a WatchdogSec=4s drop-in, the database a fresh one on the host's PostgreSQL.
# It checks: notifyd-migrate succeeds; notifyd starts (Type=notify, ExecStartPre check-config)
# and serves WebSocket, /readyz and /metrics; the hardening took effect (NoNewPrivs, seccomp,
# not root, read-only /etc, no secret in the environment or the journal) and the jwt_secret
# credential is what verifies tokens; reload keeps clients and logs the changed setting; a
# SIGSTOPped process is killed by the watchdog and restarted; stop closes clients with 1001 and
# ends inactive; notifyd@9101 and notifyd@9102 share the public port (each with its admin port)
# and split the clients; stopping notifyd.target stops them.
# Root only. Env: NOTIFYD_E2E_TREE (cached guest tree, default /var/cache/notifyd-e2e/bookworm,
# debootstrapped when missing), NOTIFYD_E2E_PG (default postgresql://postgres@127.0.0.1:5432).
# Exit status 0 only when every step passed; a table with each step's seconds at the end.
import asyncio
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
try:
    import asyncpg
    import jwt
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect
except ImportError:  # run with the system python: use the project's venv
    os.execv(REPO / ".venv/bin/python", [str(REPO / ".venv/bin/python"), *sys.argv])

TREE = Path(os.environ.get("NOTIFYD_E2E_TREE", "/var/cache/notifyd-e2e/bookworm"))
PG = os.environ.get("NOTIFYD_E2E_PG", "postgresql://postgres@127.0.0.1:5432")
GUEST_ENV = [
    "env",
    "-i",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "SYSTEMD_PAGER=",
    "SYSTEMD_COLORS=0",
]
UNITS = ["notifyd.service", "notifyd@.service", "notifyd.target", "notifyd-migrate.service"]
ADMIN_PORTS = (9101, 9102)
RESULTS: list[tuple[str, bool, float, str]] = []
S: dict = {"clients": contextlib.ExitStack(), "problems": []}  # the run's state


class Failure(Exception):
    """A check that did not hold."""


def ok(cond, what):
    if not cond:
        raise Failure(what)
    print(f"   ok  {what}", flush=True)


def problem(what, evidence=""):
    """A failed check after which the step can go on: the step fails at its end."""
    print(f"   FAIL {what}\n{evidence}", flush=True)
    S["problems"].append(what)


def run(cmd, check=True, timeout=600):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise Failure(
            f"{' '.join(map(str, cmd[-6:]))} -> exit {p.returncode}: "
            f"{(p.stdout + p.stderr).strip()}"
        )
    return p


def guest(*cmd, check=True, timeout=120):
    return run(["nsenter", "-t", str(S["pid1"]), "-a", *GUEST_ENV, *cmd], check, timeout)


def show(unit, *props):
    out = guest("systemctl", "show", "-p", ",".join(props), unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(unit="notifyd", since=0):
    return guest("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout.splitlines()[since:]


def journal_tail(n=25):
    return guest(
        "journalctl",
        "--no-pager",
        "-n",
        str(n),
        "-o",
        "short-monotonic",
        "-u",
        "notifyd*",
        check=False,
    ).stdout


def logged(msg, lines):  # notifyd's JSON log line with this msg, or None
    found = [j for ln in lines if ln.startswith('{"') and (j := json.loads(ln))["msg"] == msg]
    return found[0] if found else None


def wait_for(what, pred, timeout):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return value


def wait_state(unit, want=("active", "running"), timeout=60):
    def probe():
        s = show(unit, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Result")
        if s["ActiveState"] == "failed":
            raise Failure(f"{unit} failed: {s}")
        return s if (s["ActiveState"], s["SubState"]) == want else None

    s = wait_for(f"{unit} {'/'.join(want)}", probe, timeout)
    ok(
        True,
        f"{unit} {'/'.join(want)}, MainPID={s['MainPID']}, Result={s['Result']}"
        + (f", status {s['StatusText']!r}" if s["StatusText"] else ""),
    )
    return s


def pg(query, db="postgres"):
    async def go():
        conn = await asyncpg.connect(f"{PG}/{db}")
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(go())


def http(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def gauge(port, name="notifyd_connections"):
    m = re.search(rf"^{name} (\S+)$", http(port, "/metrics")[1], re.M)
    return float(m.group(1)) if m else None


def client(sub="u1", secret=None):
    now = int(time.time())
    tok = jwt.encode(
        {"sub": sub, "roles": ["user"], "iat": now, "exp": now + 3600},
        secret or S["secret"],
        algorithm="HS256",
    )
    ws = S["clients"].enter_context(
        connect(f"ws://127.0.0.1:{S['port']}/ws?token={tok}", open_timeout=10)
    )
    first = json.loads(ws.recv(timeout=10))["type"]
    if first != "connection-confirmed":
        raise Failure(f"{sub}: first frame {first}, not connection-confirmed")
    return ws


def expect(ws, type_, timeout=10):
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        frame = json.loads(ws.recv(timeout=left))
        if frame["type"] == type_:
            return frame
    raise Failure(f"no {type_} frame within {timeout}s")


def close_code(ws, timeout=15):
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            ws.recv(timeout=timeout)
    return ws.close_code


def write(path, text, mode=0o644):
    path = S["root"] / path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def write_toml(log_level):
    toml = (REPO / "systemd/notifyd.toml").read_text()
    for key, value in (
        ("dsn", f'"{PG}/{S["db"]}"'),
        ("port", S["port"]),
        ("log_level", f'"{log_level}"'),
    ):
        toml = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", toml)
    write("/etc/notifyd/notifyd.toml", toml)


@contextlib.contextmanager
def step(name, fatal=False):
    print(f"\n== {name}", flush=True)
    t0, S["problems"] = time.monotonic(), []
    try:
        yield
        if S["problems"]:
            raise Failure("; ".join(S["problems"]))
    except BaseException as exc:  # SIGTERM and Ctrl-C too: recorded, then passed on
        note = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        RESULTS.append((name, False, time.monotonic() - t0, note))
        if not S["problems"] and isinstance(exc, Exception):
            print(f"   FAIL {exc}", flush=True)
            if S.get("pid1"):
                print("   --- guest journal, notifyd* ---\n" + journal_tail(), flush=True)
        if fatal or not isinstance(exc, Exception):
            raise
    else:
        RESULTS.append((name, True, time.monotonic() - t0, ""))


def prepare_tree():
    if not (shutil.which("debootstrap") and shutil.which("systemd-nspawn")):
        apt = ["apt-get", "install", "-y", "-q", "debootstrap", "systemd-container"]
        if run(apt, check=False).returncode:
            run(["apt-get", "update", "-q"])
            run(apt)
    TREE.parent.mkdir(parents=True, exist_ok=True)
    with open(TREE.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (TREE / "usr/bin/systemctl").exists():
            tmp = TREE.with_name(TREE.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=systemd,systemd-sysv,dbus,"
                    "python3,python3-venv,libpam-systemd,procps",
                    "bookworm",
                    tmp,
                    "http://deb.debian.org/debian",
                ],
                timeout=1800,
            )
            tmp.rename(TREE)
            print(f"   debootstrapped {TREE}")
        # What a Debian server has and minbase lacks: venv for the install, procps for the
        # units' ExecReload=/bin/kill.
        if not (
            list(TREE.glob("usr/lib/python3*/ensurepip/__init__.py"))
            and (TREE / "usr/bin/kill").exists()
        ):
            run(
                [
                    "systemd-nspawn",
                    "-q",
                    "-D",
                    TREE,
                    "--register=no",
                    "--keep-unit",
                    *GUEST_ENV,
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    "python3-venv",
                    "procps",
                ],
                timeout=900,
            )
            print("   installed python3-venv and procps into the cached tree")
    S["work"] = Path(tempfile.mkdtemp(prefix="notifyd-e2e-"))
    S["root"] = S["work"] / "root"
    for d in ("upper", "ovlwork", "root"):
        (S["work"] / d).mkdir()
    opts = f"lowerdir={TREE},upperdir={S['work']}/upper,workdir={S['work']}/ovlwork"
    if run(["mount", "-t", "overlay", "overlay", "-o", opts, S["root"]], check=False).returncode:
        run(["cp", "-a", "--reflink=auto", f"{TREE}/.", S["root"]])
        ok(True, f"{TREE} copied to {S['root']} (no overlayfs)")
    else:
        S["overlay"] = True
        ok(True, f"{TREE} under a throwaway overlay at {S['root']}")


def configure():
    run([REPO / ".venv/bin/pip", "wheel", "-q", "--no-deps", "-w", S["work"] / "wheel", REPO])
    (wheel,) = (S["work"] / "wheel").glob("notifyd-*.whl")
    shutil.copy(wheel, S["root"] / "root")
    S["wheel"] = f"/root/{wheel.name}"
    for unit in UNITS:
        shutil.copy(REPO / "systemd" / unit, S["root"] / "etc/systemd/system" / unit)
    for unit in ("notifyd.service", "notifyd@.service"):
        write(f"/etc/systemd/system/{unit}.d/test.conf", "[Service]\nWatchdogSec=4s\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        S["port"] = s.getsockname()[1]
    S["db"] = f"notifyd_e2e_{os.getpid()}"
    pg(f"CREATE DATABASE {S['db']}")
    S["secret"] = secrets.token_urlsafe(30)  # 40 characters
    write_toml("INFO")
    write("/etc/notifyd/jwt_secret", S["secret"], 0o600)
    ok(
        True,
        f"{wheel.name}, units + WatchdogSec=4s drop-ins, /etc/notifyd/notifyd.toml "
        f"(port {S['port']}, database {S['db']}), /etc/notifyd/jwt_secret 0600",
    )


def boot():
    log = open(S["work"] / "nspawn.log", "w")  # noqa: SIM115 (the guest outlives this call)
    S["nspawn"] = subprocess.Popen(
        [
            "systemd-nspawn",
            "-D",
            S["root"],
            "-M",
            f"notifyd-e2e-{os.getpid()}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=passive",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    tasks = Path(f"/proc/{S['nspawn'].pid}/task")
    S["pid1"] = int(
        wait_for(
            "the guest's PID 1",
            lambda: " ".join(c.read_text() for c in tasks.glob("*/children")).split(),
            20,
        )[0]
    )
    state = wait_for(
        "boot",
        lambda: (
            (out := guest("systemctl", "is-system-running", check=False).stdout.strip())
            in ("running", "degraded")
            and out
        ),
        60,
    )
    ok(True, f"guest booted ({state}), its PID 1 is host pid {S['pid1']}")


def main():
    with step("1 tree: cached guest + throwaway overlay", fatal=True):
        prepare_tree()
    with step("2 wheel, units, config, database, secret", fatal=True):
        configure()
    with step("3 boot guest", fatal=True):
        boot()
    with step("4 install: venv + pip install wheel (PyPI)", fatal=True):
        guest("python3", "-m", "venv", "/opt/notifyd")
        # A TLS-intercepting proxy's CA (the host's PIP_CERT) is needed by pip in the guest too.
        ca = next(
            (
                os.environ[v]
                for v in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
                if os.path.isfile(os.environ.get(v, ""))
            ),
            None,
        )
        if ca:
            shutil.copy(ca, S["root"] / "root/host-ca.pem")
        guest(
            *(["env", "PIP_CERT=/root/host-ca.pem"] if ca else []),
            "/opt/notifyd/bin/pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            S["wheel"],
            timeout=600,
        )
        ok(guest("/opt/notifyd/bin/notifyd", "--help").returncode == 0, "notifyd installed")
    with step("5 systemctl start notifyd-migrate", fatal=True):
        guest("systemctl", "start", "notifyd-migrate")
        ok(show("notifyd-migrate", "Result")["Result"] == "success", "Result=success")
        ok(
            pg("SELECT count(*) FROM pg_namespace WHERE nspname = 'notifyd'", S["db"]) == 1,
            f"schema notifyd in {S['db']}",
        )
    ws = None
    with step("6 start notifyd, WebSocket, /readyz, /metrics"):
        guest("systemctl", "start", "notifyd", timeout=90)
        S["main"] = wait_state("notifyd")["MainPID"]
        ws = client("u1")
        ok(
            expect(ws, "notification:unread-count", 5)["data"]["count"] == 0,
            "token from the jwt_secret accepted: connection-confirmed, unread-count 0",
        )
        pg("SELECT notifyd.notify('u1', 't', 'hello', 'm')", S["db"])
        ok(
            expect(ws, "notification:new")["data"]["notification"]["title"] == "hello",
            "notification:new 'hello' after notifyd.notify() on the host",
        )
        ok(http(S["port"], "/readyz")[0] == 200, "/readyz 200")
        ok(gauge(S["port"]) == 1.0, "/metrics has notifyd_connections 1.0")
        # the hardening must leave the process metrics readable (/proc/self)
        ok(
            (gauge(S["port"], "process_resident_memory_bytes") or 0) > 0
            and (gauge(S["port"], "process_open_fds") or 0) > 0,
            "/metrics has process_* metrics",
        )
    with step("7 hardening + credential"):
        status = dict(
            re.findall(r"^(\w+):\s+(\S+)", guest("cat", f"/proc/{S['main']}/status").stdout, re.M)
        )
        ok((status["NoNewPrivs"], status["Seccomp"]) == ("1", "2"), "NoNewPrivs 1, Seccomp 2")
        ok(status["Uid"] != "0", f"Uid {status['Uid']}, not root")
        s = show("notifyd", "ProtectSystem", "DynamicUser", "NoNewPrivileges", "Environment")
        ok(
            (s["ProtectSystem"], s["DynamicUser"], s["NoNewPrivileges"])
            == ("strict", "yes", "yes"),
            "ProtectSystem=strict DynamicUser=yes NoNewPrivileges=yes",
        )
        touch = guest("nsenter", "-t", S["main"], "-m", "touch", "/etc/e2e", check=False)
        ok(touch.returncode and "Read-only" in touch.stderr, "/etc read-only for the service")
        environ = guest("cat", f"/proc/{S['main']}/environ").stdout.split("\0")
        ok(
            "NOTIFYD_JWT_SECRET" not in str([*environ, s["Environment"]])
            and any(e.startswith("CREDENTIALS_DIRECTORY=") for e in environ),
            "no NOTIFYD_JWT_SECRET in the environment, CREDENTIALS_DIRECTORY set",
        )
        ok(S["secret"] not in "\n".join(journal()), "the secret is not in the journal")
        try:
            refused = client("u1", secrets.token_urlsafe(30)) and "accepted"
        except InvalidStatus as exc:
            refused = exc.response.status_code
        ok(refused == 401, f"a token signed with another secret: {refused}")
    with step("8 reload keeps clients, logs the change"):
        ws = ws or client("u1")
        for level in ("WARNING", "INFO"):
            since = len(journal())
            write_toml(level)
            reload = guest("systemctl", "reload", "notifyd", check=False)
            if reload.returncode:
                why = [ln for ln in journal(since=since) if "Failed" in ln or "failed" in ln]
                problem(
                    f"systemctl reload ({level}) exited {reload.returncode}: {why[:1]}",
                    journal_tail(6) + "   (carrying on with systemctl kill -s HUP)",
                )
                guest("systemctl", "kill", "--kill-who=main", "-s", "HUP", "notifyd")
            ws.send(json.dumps({"type": "ping", "data": {}}))
            expect(ws, "pong", 5)
            line = wait_for(
                "'configuration reloaded' in the journal",
                lambda: logged("configuration reloaded", journal(since=since)),  # noqa: B023
                10,
            )
            ok(
                "log_level" in line.get("changed", []),
                f"log_level={level}: client kept (ping -> pong), journal: {json.dumps(line)}",
            )
        ok(show("notifyd", "MainPID")["MainPID"] == S["main"], "same MainPID")
    with step("9 watchdog restarts a SIGSTOPped notifyd"):
        before = show("notifyd", "NRestarts", "MainPID")
        ok(before["NRestarts"] == "0", "NRestarts=0")
        t0 = time.monotonic()
        guest("systemctl", "kill", "--kill-who=main", "-s", "STOP", "notifyd")
        wait_for("NRestarts=1", lambda: show("notifyd", "NRestarts")["NRestarts"] == "1", 20)
        s = wait_state("notifyd", timeout=20)
        ok(
            s["MainPID"] != before["MainPID"],
            f"restarted {time.monotonic() - t0:.1f}s after SIGSTOP: NRestarts=1, new MainPID",
        )
        ok(
            [ln for ln in journal() if "Watchdog timeout" in ln][-1:],
            "journal: "
            + "; ".join(ln for ln in journal() if "atchdog" in ln or "Main process" in ln),
        )
        if ws is not None:
            print(f"   note: the old client was dropped (close code {close_code(ws, 5)})")
    with step("10 stop: 1001 to clients, 'shutting down', inactive"):
        ws, since = client("u1"), len(journal())
        guest("systemctl", "stop", "notifyd", timeout=60)
        ok(close_code(ws) == 1001, f"client closed with {ws.close_code}")
        ok(logged("shutting down", journal(since=since)), "journal: 'shutting down'")
        wait_state("notifyd", ("inactive", "dead"), 5)
        ok(show("notifyd", "Result")["Result"] == "success", "not failed")
    with step("11 notifyd@9101 + notifyd@9102 share the public port"):
        units = [f"notifyd@{p}" for p in ADMIN_PORTS]
        for p in ADMIN_PORTS:
            with socket.socket() as s:
                ok(s.connect_ex(("127.0.0.1", p)) != 0, f"port {p} is free on the host")
        guest("systemctl", "enable", "--now", *units, timeout=90)
        for unit in units:
            wait_state(unit)
        for p in ADMIN_PORTS:
            ok(http(p, "/metrics")[0] == 200, f"admin :{p}/metrics 200")
        ok(http(S["port"], "/metrics")[0] == 404, f"public :{S['port']}/metrics 404")
        many = [client(f"c{i}") for i in range(20)]
        counts = wait_for(
            "the gauges to sum to 20",
            lambda: (c := [gauge(p) or 0 for p in ADMIN_PORTS]) and sum(c) == 20 and c,
            5,
        )
        ok(min(counts) > 0, f"20 clients connected, split {counts[0]:.0f}/{counts[1]:.0f}")
        guest("systemctl", "stop", "notifyd.target", timeout=60)
        for unit in units:
            wait_state(unit, ("inactive", "dead"), 1)
        codes = {close_code(w, 5) for w in many}
        ok(codes == {1001}, f"systemctl stop notifyd.target: the 20 clients got {codes}")


def cleanup():
    S["clients"].close()
    if S.get("nspawn"):
        S["nspawn"].terminate()
        try:
            S["nspawn"].wait(20)
        except subprocess.TimeoutExpired:
            S["nspawn"].kill()
            S["nspawn"].wait()
        S["pid1"] = None
    if S.get("overlay") and run(["umount", S["root"]], check=False).returncode:
        run(["umount", "-l", S["root"]])
    if S.get("work"):
        shutil.rmtree(S["work"])
    if S.get("db"):
        pg(f"DROP DATABASE IF EXISTS {S['db']} WITH (FORCE)")
    ok(True, f"guest stopped, {S.get('work')} removed, database {S.get('db')} dropped")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("systemd-e2e: must run as root (systemd-nspawn, mount)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        with contextlib.suppress(Exception):  # a fatal step: reported, the rest is skipped
            main()
    finally:
        with step("12 cleanup"):
            cleanup()
        print(f"\n {'step':<54} result  secs  note")
        for name, passed, secs, note in RESULTS:
            print(f" {name:<54} {'PASS' if passed else 'FAIL'} {secs:6.1f}  {note}")
        failed = sum(not r[1] for r in RESULTS)
        print(
            f" total {time.monotonic() - t0:.1f}s: {len(RESULTS) - failed} passed, "
            f"{failed} failed{'' if len(RESULTS) == 12 else ', steps skipped'}"
        )
    sys.exit(1 if failed or len(RESULTS) != 12 else 0)
