"""The nightly backup as deployed: systemd accepts the units, and the unit's script takes a backup,
sends it to a real sshd on loopback and prunes, driven only by the environment file's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyd.client import KeydClient
from tests.backup.conftest import Keys, Sshd
from tests.keyd.conftest import ROOT, Running, unsealed_keyd
from tests.support import need_binary
from tests.webapp.keys.conftest import seed_cards
from webapp.db import migrate
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log

DEPLOY = ROOT / "backup" / "deploy"


def test_units_verify(tmp_path: Path) -> None:
    analyze = need_binary("systemd-analyze")
    units = sorted([*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")])
    assert {u.name for u in units} == {
        "strongroom-backup.service",
        "strongroom-backup.timer",
        "strongroom-backup-failed.service",
    }
    for unit in units:
        # Installed under /opt/strongroom; here the checkout stands in so ExecStart= paths exist.
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/strongroom", str(ROOT)))
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u.name) for u in units)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr


@pytest.fixture
def daemon() -> Iterator[Running]:
    with unsealed_keyd() as running:
        yield running


def _environment(tmp_path: Path, daemon: Running, sshd: Sshd, keys: Keys, url: str) -> dict[str, str]:
    """What /etc/strongroom/backup.env holds on a server (docs/backup.md), pointed at this test's parts."""
    return {
        "PATH": os.environ["PATH"],
        "STRONGROOM_PYTHON": sys.executable,
        "STRONGROOM_BACKUP_OUT_DIR": str(tmp_path / "local-backups"),
        "STRONGROOM_BACKUP_KEYD_STATE_DIR": str(daemon.keyd.state_dir),
        "STRONGROOM_BACKUP_DATABASE_URL": url,
        "STRONGROOM_BACKUP_ALERT_DATABASE_URL": url,
        "STRONGROOM_BACKUP_RECIPIENT": str(keys.recipient),
        "STRONGROOM_BACKUP_SIGNING_KEY": str(keys.signing_key),
        "STRONGROOM_BACKUP_HOST": "127.0.0.1",
        "STRONGROOM_BACKUP_PORT": str(sshd.port),
        "STRONGROOM_BACKUP_USER": "root",
        "STRONGROOM_BACKUP_SSH_KEY": str(sshd.client_key),
        "STRONGROOM_BACKUP_KNOWN_HOSTS": str(sshd.known_hosts),
        "STRONGROOM_BACKUP_REMOTE_DIR": str(sshd.remote_dir),
        "STRONGROOM_BACKUP_KEEP_LAST": "1",
        "STRONGROOM_BACKUP_KEEP_DAYS": "0",
    }


def _night(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What the timer starts: the unit's script, with only the environment file's settings."""
    script = [str(DEPLOY / "daily.sh")]
    return subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def _events(url: str) -> list[str]:
    engine = make_engine(url)
    with engine.connect() as conn:
        events = [r.event for r in conn.execute(sa.select(audit_log.c.event).order_by(audit_log.c.seq))]
    engine.dispose()
    return events


def test_the_nightly_script_creates_sends_and_prunes(
    tmp_path: Path, daemon: Running, sshd: Sshd, backup_keys: Keys
) -> None:
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    with KeydClient(daemon.keyd.socket, timeout=10.0) as client:
        seed_cards(engine, client, 5)
    engine.dispose()
    env = _environment(tmp_path, daemon, sshd, backup_keys, url)
    for _ in range(2):
        done = _night(env)
        assert done.returncode == 0, done.stdout + done.stderr
    # Two nights, keep-last 1: one backup left on each side, the newest, sent and verified.
    remote = sorted(p.name for p in sshd.remote_dir.iterdir())
    local = sorted(p.name for p in (tmp_path / "local-backups").iterdir())
    assert len(remote) == 1
    assert remote == local
    assert (tmp_path / "local-backups").stat().st_mode & 0o077 == 0
    assert _events(url) == ["backup.created", "backup.sent", "backup.created", "backup.sent"]


def test_a_wrong_host_key_fails_the_night_and_raises_an_alert(
    tmp_path: Path, daemon: Running, sshd: Sshd, backup_keys: Keys
) -> None:
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    env = _environment(tmp_path, daemon, sshd, backup_keys, url)
    # The same host, another key: a man in the middle, or a rebuilt server nobody re-pinned.
    env["STRONGROOM_BACKUP_KNOWN_HOSTS"] = str(sshd.wrong_known_hosts)
    done = _night(env)
    assert done.returncode != 0
    assert list(sshd.remote_dir.iterdir()) == []
    assert _events(url) == ["backup.created", "backup.failed"]
    engine = make_engine(url)
    with engine.connect() as conn:
        queued = [r.event for r in conn.execute(sa.text("SELECT event FROM outbox"))]
    engine.dispose()
    assert queued == ["backup.failed"]
