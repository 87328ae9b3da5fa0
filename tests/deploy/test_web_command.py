"""The web app's ExecStart=, as written in deploy/strongroom-web.service, really serves: gunicorn
comes up on the Unix socket only, tells systemd it is ready (Type=notify), answers HTTP over the
socket, and stops cleanly on SIGTERM. Run as root here (the container's python lives under /root,
which another uid cannot reach); the unit's sandboxing itself needs systemd (docs/deploy.md)."""

from __future__ import annotations

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
from pathlib import Path

import pytest

from tests.deploy.test_units import options
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


def unit_argv(web_socket: Path) -> list[str]:
    command = options("strongroom-web.service")["ExecStart"][0]
    argv = shlex.split(command.replace("/opt/strongroom", str(ROOT)))
    assert argv.count(f"unix:{UNIT_SOCKET}") == 1
    return [f"unix:{web_socket}" if a == f"unix:{UNIT_SOCKET}" else a for a in argv]


def unit_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in options("strongroom-web.service")["Environment"]:
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Path, bytes, subprocess.Popen[bytes]]]:
    with tempfile.TemporaryDirectory(prefix="web-unit-") as tmp_name:
        tmp = Path(tmp_name)
        web_socket = tmp / "gunicorn.sock"
        notify = tmp / "notify.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify))
        listener.settimeout(30)
        instance = tmp / "instance"
        instance.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "WEB_CONCURRENCY"))}
        env |= unit_environment()
        env |= {
            # What /etc/strongroom/webapp.env provides (deploy/webapp.env.in), with a test database.
            "STRONGROOM_SECRET_KEY": secrets.token_urlsafe(40),
            "STRONGROOM_DATABASE_URL": f"sqlite:///{tmp}/strongroom.db",
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
        proc = subprocess.Popen(
            unit_argv(web_socket), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            messages = b""
            deadline = time.monotonic() + 30
            while b"READY=1" not in messages and time.monotonic() < deadline:
                try:
                    messages += listener.recv(4096) + b"\n"
                except TimeoutError:
                    break
            yield web_socket, messages, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                log.close()
                listener.close()
                if proc.returncode is None:
                    proc.kill()


def test_ready_is_notified(served: tuple[Path, bytes, subprocess.Popen[bytes]]) -> None:
    _, messages, proc = served
    assert proc.poll() is None
    assert b"READY=1" in messages


def test_answers_http_on_the_unix_socket(served: tuple[Path, bytes, subprocess.Popen[bytes]]) -> None:
    web_socket, _, _ = served
    conn = UnixHTTPConnection(str(web_socket))
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    # No client certificate header from Apache: the app refuses or redirects, but it answers
    # (a 5xx would mean the command line, the environment or the database is wrong).
    assert 200 <= response.status < 500
    conn.close()


def test_listens_on_no_tcp_port(served: tuple[Path, bytes, subprocess.Popen[bytes]]) -> None:
    _, _, proc = served
    inodes = set()
    for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    tcp = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    listening = {line.split()[9] for line in tcp.splitlines()[1:] if line.split()[3] == "0A"}
    assert not inodes & listening
