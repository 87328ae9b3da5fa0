"""The health agent's ExecStart=, as the install renders deploy/strongroom-health-agent.service.in,
really answers: it listens on its TCP address, says one line to a connection (here `down #keyd`: no
keyd runs), and stops on SIGTERM. The whole run is traced with strace and held to the unit's
SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute=, and to the compiled
strongroom-health-agent AppArmor profile (what systemd and the kernel would enforce: not here)."""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

from deploy.server.settings import Balancer
from tests.apparmor.policy import compiled_file_rules, decide
from tests.deploy.syscalls import (
    allowed_syscalls,
    file_accesses,
    python_service_moves,
    read_trace,
    syscall_groups,
    translate,
)
from tests.deploy.test_health_agent_unit import options, rendered
from tests.support import free_port, need_binary
from webapp import create_app
from webapp.db import migrate

ROOT = Path(__file__).resolve().parents[2]


def ask(port: int) -> bytes:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                return conn.recv(64)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_agent_answers_within_its_unit_and_profile(tmp_path: Path) -> None:
    strace = need_binary("strace")
    analyze = need_binary("systemd-analyze")
    parser = need_binary("apparmor_parser")
    port = free_port()
    # Loopback stands in for the node's address (the settings refuse loopback; the agent does not).
    opts = options(rendered(Balancer(("192.0.2.2",), "127.0.0.1", port)))
    argv = shlex.split(opts["ExecStart"][0].replace("/opt/strongroom", str(ROOT)))
    instance = tmp_path / "instance"
    instance.mkdir()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for line in opts["Environment"]:
        env |= dict(item.split("=", 1) for item in shlex.split(line))
    env |= {
        # What /etc/strongroom/webapp.env provides, with a test database and no keyd.
        "STRONGROOM_SECRET_KEY": secrets.token_urlsafe(40),
        "STRONGROOM_DATABASE_URL": f"sqlite:///{instance}/strongroom.db",
        "STRONGROOM_KEYD_SOCKET": str(tmp_path / "no-keyd.sock"),
        "STRONGROOM_INSTANCE_PATH": str(instance),
    }
    app = create_app(
        {k.removeprefix("STRONGROOM_"): v for k, v in env.items() if k.startswith("STRONGROOM_")}
    )
    migrate.upgrade(app.extensions["strongroom"].engine)
    app.extensions["strongroom"].engine.dispose()
    log = tmp_path / "strace.log"
    proc = subprocess.Popen(
        [strace, "-f", "-qq", "-y", "-o", str(log), *argv],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert ask(port) == b"down #keyd\n"
        # SIGTERM to the agent (strace's child), as systemd's stop would.
        child = next(
            int(p.parent.name)
            for p in Path("/proc").glob("[0-9]*/stat")
            if p.read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid)
        )
        os.kill(child, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"health agent listening on" in err

    trace = read_trace(log)
    allowed = allowed_syscalls(opts["SystemCallFilter"], syscall_groups(analyze))
    assert {"execve", "bind", "listen"} <= trace.calls
    # SQLite, run as root here, hands its WAL files to the database's owner (a no-op as any other
    # user); in production the database is MariaDB's, over a socket.
    chowns = [line for line in log.read_text().splitlines() if " fchown(" in line]
    assert all(f"<{instance}/strongroom.db-" in line for line in chowns), chowns
    calls = trace.calls - {"fchown"}
    assert calls - allowed == set(), "refused by SystemCallFilter= (EPERM under systemd)"
    assert trace.families <= set(opts["RestrictAddressFamilies"][0].split())
    assert "AF_INET" in trace.families
    assert trace.write_exec_maps == [], "MemoryDenyWriteExecute= would refuse these"

    rules = compiled_file_rules(parser, ROOT / "apparmor" / "strongroom-health-agent")
    moves = [
        (f"{instance}/", "/var/lib/strongroom-web/"),
        (f"{tmp_path}/no-keyd.sock", "/run/strongroom-keyd/keyd.sock"),
        *python_service_moves(ROOT),
    ]
    accesses = translate(file_accesses(log), moves)
    assert [p for p, _ in accesses if p.startswith(("/root/", str(tmp_path), str(ROOT)))] == []
    assert sum(p.startswith("/opt/strongroom/webapp/") for p, _ in accesses) > 20
    # The test's SQLite file stands where production has MariaDB's socket: not a profile question.
    started = "/opt/strongroom/.venv/bin/flask"  # exec'd by systemd, into the profile
    refused = sorted(
        (path, perm)
        for path, perm in accesses
        if (path, perm) != (started, "x") and not path.startswith("/var/lib/strongroom-web/strongroom.db")
        and not decide(rules, path).allows(perm)
    )  # fmt: skip
    assert refused == [], "the profile would refuse:\n" + "\n".join(f"{p} {m}" for p, m in refused)
