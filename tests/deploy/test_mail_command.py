"""The mailer's ExecStart=, as written in deploy/strongroom-mail.service, with the unit's environment:
it delivers a queued alert to an SMTP server on loopback, stops cleanly on SIGTERM, and its traced
run passes the unit's SystemCallFilter=, RestrictAddressFamilies=, IPAddressAllow=localhost and
MemoryDenyWriteExecute=, and the compiled strongroom-mail AppArmor profile. Unusable settings stop it
for good, and its OnFailure= script tells root through postfix."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ops.postfix import Postfix
from tests.apparmor.policy import compiled_file_rules, decide
from tests.deploy.syscalls import (
    allowed_syscalls,
    file_accesses,
    python_service_moves,
    read_trace,
    syscall_groups,
    translate,
)
from tests.deploy.test_units import options
from tests.deploy.test_web_command import descendants, unit_environment
from tests.deploy.test_webapp_env import environment_file, render
from tests.ops.postfix_harness import local_users, private_postfix
from tests.ops.rsyslog_harness import wait_for
from tests.support import free_port, need_binary, need_root
from tests.webapp.smtpsink import Sink, smtp_server
from webapp import create_app, outbox
from webapp.db import migrate

ROOT = Path(__file__).resolve().parents[2]
_INET_CONNECT = re.compile(r'connect\(\d+(?:<[^>]*>)?, \{sa_family=AF_INET6?, [^}]*addr\(?"?([0-9a-f.:]+)')


def test_mailer_unit_delivers_within_its_sandbox() -> None:
    need_root()
    strace, analyze = need_binary("strace"), need_binary("systemd-analyze")
    opts = options("strongroom-mail.service")
    argv = shlex.split(opts["ExecStart"][0].replace("/opt/strongroom", str(ROOT)))
    assert argv[1:] == ["--app", "webapp", "mail", "run", "--interval", "60"]
    with tempfile.TemporaryDirectory(prefix="mail-unit-") as tmp_name, smtp_server(Sink()) as port:
        tmp = Path(tmp_name)
        instance = tmp / "instance"
        instance.mkdir()
        settings = {
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_URL": f"sqlite:///{instance}/strongroom.db",
            "INSTANCE_PATH": str(instance),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": port,
            "MAIL_FROM": "strongroom@vault.example",
            "ALERT_TO": "admin@example.com",
        }
        app = create_app(settings)
        engine = app.extensions["strongroom"].engine
        migrate.upgrade(engine)
        with engine.begin() as conn:
            outbox.enqueue(conn, "ops.port_new", now=datetime.now(UTC))
        engine.dispose()
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **unit_environment("strongroom-mail.service"),
        }
        env |= {f"STRONGROOM_{k}": str(v) for k, v in settings.items()}
        trace_log = tmp / "strace.log"
        log = (tmp / "mail.log").open("wb")
        proc = subprocess.Popen(
            [strace, "-f", "-qq", "-y", "-o", str(trace_log), *argv],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            # Short read transactions only: an open one would hold SQLite's lock against the mailer.
            def left() -> list[object]:
                with engine.connect() as conn:
                    return list(outbox.pending(conn))

            deadline = time.monotonic() + 30
            while left() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert left() == [], (tmp / "mail.log").read_text()
        finally:
            for pid in descendants(proc.pid) - {proc.pid}:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                if stat[1] == str(proc.pid):
                    os.kill(pid, signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()
            engine.dispose()
        assert proc.returncode == 0, (tmp / "mail.log").read_text()

        trace = read_trace(trace_log)
        allowed = allowed_syscalls(opts["SystemCallFilter"], syscall_groups(analyze))
        # SQLite's unix VFS fchowns a new journal file to the database's owner only when it runs as
        # root, as this test does; under the unit (strongroom-web, and MariaDB) it does not.
        root_only = {"fchown"}
        assert trace.calls - allowed - root_only == set(), (
            "refused by SystemCallFilter= (EPERM under systemd)"
        )
        assert trace.families <= set(opts["RestrictAddressFamilies"][0].split())
        assert trace.write_exec_maps == [], "MemoryDenyWriteExecute= would refuse these"
        peers = {m[1] for line in trace_log.read_text().splitlines() if (m := _INET_CONNECT.search(line))}
        assert peers, "no SMTP connection in the trace"
        assert peers <= {"127.0.0.1", "::1"}, f"IPAddressAllow=localhost would drop {peers}"

        moves = [
            (f"{instance}/", "/var/lib/strongroom-web/"),
            *python_service_moves(ROOT),
        ]
        accesses = translate(file_accesses(trace_log), moves)
        assert [p for p, _ in accesses if p.startswith(("/root/", str(tmp), str(ROOT)))] == []
        rules = compiled_file_rules(need_binary("apparmor_parser"), ROOT / "apparmor" / "strongroom-mail")
        started = "/opt/strongroom/.venv/bin/flask"  # exec'd by systemd, into the profile
        refused = sorted(
            (p, m) for p, m in accesses if (p, m) != (started, "x") and not decide(rules, p).allows(m)
        )
        assert refused == [], "the profile would refuse:\n" + "\n".join(f"{p} {m}" for p, m in refused)


def test_unusable_settings_stop_the_mailer_for_good_and_root_hears_it(tmp_path: Path) -> None:
    """A forgotten placeholder (the env file as install.sh fills it, SECRET_KEY only): the unit's
    ExecStart= exits 78, which the unit does not restart on, and its OnFailure= script mails root
    through a real postfix into the admins' mailboxes."""
    opts = options("strongroom-mail.service")
    assert opts["RestartPreventExitStatus"] == ["78"]
    assert opts["Restart"] == ["on-failure"]
    assert opts["OnFailure"] == ["strongroom-mail-failed.service"]
    failed = options("strongroom-mail-failed.service")
    assert failed["Type"] == ["oneshot"]
    assert "User" not in failed  # root: postfix's sendmail runs setgid postdrop
    (script,) = failed["ExecStart"]
    script = script.replace("/opt/strongroom", str(ROOT))

    env = environment_file(render({"SECRET_KEY": secrets.token_urlsafe(48)}))
    instance = tmp_path / "instance"
    instance.mkdir()
    env |= {
        **unit_environment("strongroom-mail.service"),
        "STRONGROOM_DATABASE_URL": f"sqlite:///{instance}/strongroom.db",
        "STRONGROOM_INSTANCE_PATH": str(instance),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    argv = shlex.split(opts["ExecStart"][0].replace("/opt/strongroom", str(ROOT)))
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 78, done.stderr
    assert "STRONGROOM_MAIL_FROM" in done.stderr

    tag = secrets.token_hex(3)
    users = (f"sra{tag}", f"srb{tag}")
    host = "vault.example.internal"
    config = Postfix(myhostname=host, admins=tuple(f"{u}@{host}" for u in users), port=free_port())
    with local_users(*users), private_postfix(config) as pf:
        sent = subprocess.run([script], env=pf.env, capture_output=True, text=True, timeout=60, check=False)
        assert sent.returncode == 0, sent.stderr

        def mailbox(user: str) -> str:
            path = pf.mail_dir / user
            return path.read_text(errors="replace") if path.exists() else ""

        subject = "Subject: Strongroom: alert mailer failed on "
        wait_for(lambda: all(subject in mailbox(u) for u in users), timeout=30, what="notice: " + pf.log())
        assert "MAIL_FROM" not in mailbox(users[0])  # the reason stays in the journal
