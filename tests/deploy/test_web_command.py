"""The web app's ExecStart=, as written in deploy/strongroom-web.service, really serves: gunicorn
comes up on the Unix socket only, tells systemd it is ready (Type=notify), answers HTTP over the
socket, and stops cleanly on SIGTERM. Run as root here (the container's python lives under /root,
which another uid cannot reach); the unit's sandboxing itself needs systemd (docs/deploy.md)."""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apparmor.policy import compiled_file_rules, decide
from tests.deploy.syscalls import (
    Trace,
    allowed_syscalls,
    file_accesses,
    python_service_moves,
    read_trace,
    syscall_groups,
    translate,
)
from tests.deploy.test_units import options
from tests.support import need_binary
from webapp import create_app
from webapp.db import migrate

ROOT = Path(__file__).resolve().parents[2]
UNIT_SOCKET = "/run/strongroom-web/gunicorn.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.unix_path)
        self.sock = sock


def unit_argv() -> list[str]:
    command = options("strongroom-web.service")["ExecStart"][0]
    return shlex.split(command.replace("/opt/strongroom", str(ROOT)))


def unit_environment(unit: str = "strongroom-web.service") -> dict[str, str]:
    env: dict[str, str] = {}
    for line in options(unit)["Environment"]:
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            env[key] = value
    return env


@dataclass
class Served:
    tmp: Path
    socket: Path
    notified: bytes
    proc: subprocess.Popen[bytes]
    strace_log: Path


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    strace = need_binary("strace")
    with tempfile.TemporaryDirectory(prefix="web-unit-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "run-web").mkdir()
        (tmp / "notify").mkdir()
        web_socket = tmp / "run-web" / "gunicorn.sock"
        notify = tmp / "notify" / "notify.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify))
        listener.settimeout(30)
        instance = tmp / "instance"
        instance.mkdir()
        # systemd starts services with an almost empty environment: so does the test.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env |= unit_environment()
        assert env["STRONGROOM_BIND"] == f"unix:{UNIT_SOCKET}"
        env["STRONGROOM_BIND"] = f"unix:{web_socket}"
        env |= {
            # What /etc/strongroom/webapp.env provides (deploy/webapp.env.in), with a test database.
            "STRONGROOM_SECRET_KEY": secrets.token_urlsafe(40),
            "STRONGROOM_DATABASE_URL": f"sqlite:///{tmp}/instance/strongroom.db",
            "STRONGROOM_KEYD_SOCKET": str(tmp / "no-keyd.sock"),
            "STRONGROOM_INSTANCE_PATH": str(instance),
            "WEB_CONCURRENCY": "1",
            "NOTIFY_SOCKET": str(notify),
        }
        # The schema, as `flask --app webapp db upgrade` creates it before the first start.
        app = create_app(
            {
                "SECRET_KEY": env["STRONGROOM_SECRET_KEY"],
                "DATABASE_URL": env["STRONGROOM_DATABASE_URL"],
                "INSTANCE_PATH": str(instance),
            }
        )
        migrate.upgrade(app.extensions["strongroom"].engine)
        app.extensions["strongroom"].engine.dispose()
        log = (tmp / "gunicorn.log").open("wb")
        # Traced (every process, every system call) to compare with the unit's filters below.
        strace_log = tmp / "strace.log"
        argv = [strace, "-f", "-qq", "-y", "-o", str(strace_log), *unit_argv()]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            messages = b""
            deadline = time.monotonic() + 30
            while b"READY=1" not in messages and time.monotonic() < deadline:
                try:
                    messages += listener.recv(4096) + b"\n"
                except TimeoutError:
                    break
            yield Served(tmp, web_socket, messages, proc, strace_log)
        finally:
            try:
                stop(proc)
            finally:
                log.close()
                listener.close()
                if proc.returncode is None:
                    proc.kill()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to gunicorn's master (strace's child), as systemd's stop would; strace then exits."""
    if proc.poll() is None:
        for pid in descendants(proc.pid) - {proc.pid}:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid):
                os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=30)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(children.get(p, []))
    return found


def test_ready_is_notified(served: Served) -> None:
    assert served.proc.poll() is None
    assert b"READY=1" in served.notified


def test_answers_http_on_the_unix_socket(served: Served) -> None:
    conn = UnixHTTPConnection(str(served.socket))
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    # No client certificate header from Apache: the app refuses or redirects, but it answers
    # (a 5xx would mean the command line, the environment or the database is wrong).
    assert 200 <= response.status < 500
    conn.close()


def test_listens_on_no_tcp_port(served: Served) -> None:
    inodes = set()
    for pid in descendants(served.proc.pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    tcp = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    listening = {line.split()[9] for line in tcp.splitlines()[1:] if line.split()[3] == "0A"}
    assert inodes
    assert not inodes & listening


def test_the_unit_filters_allow_what_gunicorn_does(served: Served) -> None:
    """Last: stops gunicorn, then checks the whole trace (start, a request, stop) against the unit's
    SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute= (what seccomp would do)."""
    analyze = need_binary("systemd-analyze")
    stop(served.proc)
    trace: Trace = read_trace(served.strace_log)
    opts = options("strongroom-web.service")
    allowed = allowed_syscalls(opts["SystemCallFilter"], syscall_groups(analyze))
    assert {"execve", "bind", "accept4"} <= trace.calls
    assert trace.calls - allowed == set(), "refused by SystemCallFilter= (EPERM under systemd)"
    assert trace.families <= set(opts["RestrictAddressFamilies"][0].split())
    assert trace.write_exec_maps == [], "MemoryDenyWriteExecute= would refuse these"

    # The same trace against the compiled AppArmor profile, every path moved to where it is in
    # production (checkout -> /opt/strongroom, this python -> Debian's, temp dirs -> /run, /var/lib).
    parser = need_binary("apparmor_parser")
    rules = compiled_file_rules(parser, ROOT / "apparmor" / "strongroom-web")
    moves = [
        (f"{served.tmp}/run-web/", "/run/strongroom-web/"),
        (f"{served.tmp}/instance/", "/var/lib/strongroom-web/"),
        (f"{served.tmp}/notify/notify.sock", "/run/systemd/notify"),
        *python_service_moves(ROOT),
    ]
    accesses = translate(file_accesses(served.strace_log), moves)
    # Every test path was moved, and the trace is not trivially small.
    assert [p for p, _ in accesses if p.startswith(("/root/", str(served.tmp), str(ROOT)))] == []
    assert sum(p.startswith("/opt/strongroom/") for p, _ in accesses) > 100
    assert sum(p.startswith("/usr/lib/python3.11/") for p, _ in accesses) > 50
    started = "/opt/strongroom/.venv/bin/gunicorn"  # exec'd by systemd, into the profile
    refused = sorted(
        (path, perm)
        for path, perm in accesses
        if (path, perm) != (started, "x") and not decide(rules, path).allows(perm)
    )
    assert refused == [], "the profile would refuse:\n" + "\n".join(f"{p} {m}" for p, m in refused)
