"""Processes and ports against a real system state: the driver runs in private PID, network and mount
namespaces (unshare), so the baseline holds exactly what it started and nothing else can interfere."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.checks import Context, processes
from ops.checks.processes import _allowed
from ops.settings import Settings, SettingsError
from tests.ops.conftest import queued
from tests.support import need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_process_and_new_port_alert_once(tmp_path: Path, db_url: str, engine: sa.Engine) -> None:
    need_root()
    unshare = need_binary("unshare")
    proc = subprocess.run(
        [
            unshare,
            "--pid",
            "--fork",
            "--mount-proc",
            "--net",
            sys.executable,
            "-m",
            "tests.ops.ns_driver",
            str(tmp_path / "state"),
            db_url,
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    before, during, still, after = out["passes"]
    assert before == {"alerted": [], "ongoing": []}
    alerted = {(a, r) for a, r, _ in during["alerted"]}
    assert ("ops.process_unknown", "intruder user=root") in alerted
    assert ("ops.port_new", f"tcp 0.0.0.0:{out['port']} python3") in alerted or (
        "ops.port_new",
        f"tcp 0.0.0.0:{out['port']} {Path(sys.executable).name}",
    ) in alerted
    assert len(during["alerted"]) == 2, during
    # The command line never leaves the machine: only name, user and pid.
    assert all("300" not in d for _, _, d in during["alerted"] if d != "-" and "pid=" not in d)
    assert still["alerted"] == []
    assert len(still["ongoing"]) == 2
    # Gone again: nothing new to say (a vanished approved listener would alert: see below).
    assert after == {"alerted": [], "ongoing": []}
    events = [e for e, _, _ in queued(engine)]
    assert sorted(events) == ["ops.port_new", "ops.process_unknown"]


def test_a_vanished_approved_listener_alerts(tmp_path: Path, db_url: str, engine: sa.Engine) -> None:
    need_root()
    unshare = need_binary("unshare")
    script = (
        "import socket, sys\n"
        "from datetime import UTC, datetime\n"
        "from ops.runner import approve_baseline, record_baseline, run_pass\n"
        "from ops.settings import parse\n"
        "from ops.state import StateDir\n"
        "from webapp.db.engine import make_engine\n"
        "s = parse({'state_dir': sys.argv[1], 'database_url': sys.argv[2]}, environ={})\n"
        "st, now = StateDir(s.state_dir), datetime.now(UTC)\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()\n"
        "approve_baseline(st, record_baseline(s, state=st, now=now))\n"
        "srv.close()\n"
        "out = run_pass(s, state=st, engine=make_engine(sys.argv[2]), now=now, only=('ports',))\n"
        "print(*[f.alert for f in out.alerted])\n"
    )
    proc = subprocess.run(
        [
            unshare,
            "--pid",
            "--fork",
            "--mount-proc",
            "--net",
            sys.executable,
            "-c",
            script,
            str(tmp_path / "state"),
            db_url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ops.port_gone"]


VENV_PY = "/opt/strongroom/.venv/bin/python"
ALLOW = [
    {"name": "gunicorn", "user": "strongroom", "cmdline_glob": f"{VENV_PY} * gunicorn *"},
    {"name": "sshd", "user": "root", "cmdline": "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"},
]


@pytest.mark.parametrize(
    ("name", "user", "cmdline", "allowed"),
    [
        ("gunicorn", "strongroom", f"{VENV_PY} -m gunicorn -c x", True),
        ("gunicorn", "root", f"{VENV_PY} -m gunicorn -c x", False),
        ("gunicorn", "strongroom", "/tmp/python -m gunicorn -c x", False),
        ("gunicorn2", "strongroom", f"{VENV_PY} -m gunicorn -c x", False),
        ("sshd", "root", "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups", True),
        ("sshd", "root", "sshd: /usr/sbin/sshd -D l 0 of 10-100 startups", False),  # [listener] is no class
        ("sshd", "root", "sshd: root@pts/0", False),
        ("nc", "root", "nc -l 4444", False),
    ],
)
def test_allowlist_matching(name: str, user: str, cmdline: str, allowed: bool) -> None:
    assert _allowed({"name": name, "user": user, "cmdline": cmdline}, ALLOW) is allowed


def test_a_listener_handed_to_a_child_keeps_its_opener_name(
    tmp_path: Path, db_url: str, engine: sa.Engine
) -> None:
    """postfix's master hands its port 25 socket to each smtpd it spawns: which holder the kernel's
    tables name is arbitrary, so the opener names the socket and a child holding it is not news."""
    need_root()
    unshare = need_binary("unshare")
    script = (
        "import socket, subprocess, sys\n"
        "from datetime import UTC, datetime\n"
        "from ops.checks.ports import _listening\n"
        "from ops.runner import approve_baseline, record_baseline, run_pass\n"
        "from ops.settings import parse\n"
        "from ops.state import StateDir\n"
        "from webapp.db.engine import make_engine\n"
        "s = parse({'state_dir': sys.argv[1], 'database_url': sys.argv[2]}, environ={})\n"
        "st, now = StateDir(s.state_dir), datetime.now(UTC)\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()\n"
        "approve_baseline(st, record_baseline(s, state=st, now=now))\n"
        "child = subprocess.Popen(['sleep', '60'], pass_fds=[srv.fileno()])\n"
        "names = {_listening().pop().rsplit(' ', 1)[1] for _ in range(20)}\n"
        "out = run_pass(s, state=st, engine=make_engine(sys.argv[2]), now=now, only=('ports',))\n"
        "child.kill()\n"
        "print(sorted(names), [str(f.alert) for f in out.alerted])\n"
    )
    proc = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "--net", sys.executable, "-c", script,
         str(tmp_path / "state"), db_url],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"['{Path(sys.executable).name}'] []"


SMTPD = {"name": "smtpd", "user": "postfix", "cmdline": "smtpd -n 127.0.0.1:25 -t inet -u"}


def test_the_proposal_covers_what_the_server_starts_on_demand(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(routine_processes=[SMTPD])
    ctx = Context(settings=s, now=datetime.now(UTC), state=None, baseline=None)
    allow = processes.snapshot(ctx)["allow"]
    assert allow.count(SMTPD) == 1
    assert _allowed({**SMTPD, "pid": 1}, allow)
    assert not _allowed({**SMTPD, "cmdline": "smtpd -n 0.0.0.0:25 -t inet -u"}, allow)


@pytest.mark.parametrize(
    "entries",
    [
        {"name": "smtpd"},
        [{"name": "smtpd", "user": "postfix"}],
        [{**SMTPD, "cmdline_glob": "*"}],
        [{**SMTPD, "extra": "x"}],
        [{**SMTPD, "user": ""}],
        [{**SMTPD, "cmdline": 25}],
        [SMTPD] * 101,
    ],
)
def test_hostile_routine_processes(make_settings: Callable[..., Settings], entries: object) -> None:
    with pytest.raises(SettingsError):
        make_settings(routine_processes=entries)
