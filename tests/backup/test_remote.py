"""SFTP to a real sshd: the pinned host key, resumable uploads, read-back, retention; alerts on failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from backup import archive, remote
from backup.remote import RemoteRefused
from tests.backup.conftest import Keys, Sshd
from tests.backup.test_e2e import run_backup
from tests.keyd.conftest import ROOT
from webapp.db import migrate
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log, outbox

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def target(sshd: Sshd, *, known_hosts: Path | None = None) -> remote.Target:
    return remote.Target(
        "127.0.0.1", sshd.port, "root", sshd.client_key, known_hosts or sshd.known_hosts, str(sshd.remote_dir)
    )


@pytest.fixture
def backup_file(tmp_path: Path, backup_keys: Keys) -> Path:
    out = tmp_path / "local" / remote.backup_name(NOW)
    out.parent.mkdir()
    # Random content of a few chunks, so an upload can be cut in the middle.
    archive.seal(
        bytes(range(256)) * 6000,
        recipient=archive.load_recipient(str(backup_keys.recipient)),
        signing_key=archive.load_signing_key(backup_keys.signing_key),
        out=out,
    )
    return out


@pytest.fixture
def alert_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def alerts(url: str) -> list[tuple[str, str]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = [(r.event, r.detail) for r in conn.execute(sa.select(outbox.c.event, outbox.c.detail))]
        audited = [r.event for r in conn.execute(sa.select(audit_log.c.event))]
    engine.dispose()
    assert audited == [e for e, _ in rows]  # every alert is audited too
    return rows


def test_wrong_host_key_is_refused_and_alerted(sshd: Sshd, backup_file: Path, alert_db: str) -> None:
    result = run_backup(
        "send",
        str(backup_file),
        *sshd.options(known_hosts=sshd.wrong_known_hosts),
        "--alert-database-url",
        alert_db,
        check=False,
    )
    assert result.returncode == 1
    assert "does not match the pinned key" in result.stderr
    assert list(sshd.remote_dir.iterdir()) == []  # nothing reached the impostor... or the real server
    assert "Accepted publickey" not in sshd.log  # refused before authenticating
    ((event, detail),) = alerts(alert_db)
    assert event == "backup.failed"
    assert detail.startswith("send:")
    assert "pinned key" in detail


def test_unknown_host_is_refused(sshd: Sshd, backup_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    with pytest.raises(RemoteRefused, match="is not in"):
        remote.send(backup_file, target(sshd, known_hosts=empty))
    assert list(sshd.remote_dir.iterdir()) == []


def test_interrupted_upload_resumes(sshd: Sshd, backup_file: Path) -> None:
    data = backup_file.read_bytes()
    half = len(data) // 2
    (sshd.remote_dir / f"{backup_file.name}.partial").write_bytes(data[:half])  # a connection lost midway
    sent = remote.send(backup_file, target(sshd))
    assert sent.resumed_at == half
    assert sent.sent == len(data) - half
    assert (sshd.remote_dir / backup_file.name).read_bytes() == data
    assert not (sshd.remote_dir / f"{backup_file.name}.partial").exists()


def test_a_damaged_partial_is_detected_and_replaced(sshd: Sshd, backup_file: Path) -> None:
    data = backup_file.read_bytes()
    (sshd.remote_dir / f"{backup_file.name}.partial").write_bytes(b"X" * 1000)
    sent = remote.send(backup_file, target(sshd))
    assert sent.resumed_at == 0  # the second attempt started from zero
    assert (sshd.remote_dir / backup_file.name).read_bytes() == data


def test_a_finished_upload_is_not_sent_twice_and_never_overwritten(sshd: Sshd, backup_file: Path) -> None:
    remote.send(backup_file, target(sshd))
    again = remote.send(backup_file, target(sshd))
    assert again.sent == 0
    (sshd.remote_dir / backup_file.name).write_bytes(b"something else")
    with pytest.raises(RemoteRefused, match="exists remotely with other content"):
        remote.send(backup_file, target(sshd))


def test_prune_keeps_the_newest_and_the_recent_and_ignores_foreign_files(sshd: Sshd) -> None:
    ages = [0, 1, 2, 10, 40, 41, 400]
    names = [remote.backup_name(NOW - timedelta(days=d)) for d in ages]
    for n in names:
        (sshd.remote_dir / n).write_bytes(b"x")
    foreign = ["notes.txt", "strongroom-2020.sbk", "strongroom-20200101T000000Z.sbk.partial"]
    for n in foreign:
        (sshd.remote_dir / n).write_bytes(b"x")
    gone = remote.prune(target(sshd), keep_last=3, keep_days=35, now=NOW)
    assert sorted(gone) == sorted(names[4:])
    assert sorted(p.name for p in sshd.remote_dir.iterdir()) == sorted(names[:4] + foreign)


@pytest.mark.parametrize(
    ("keep_last", "keep_days", "ages", "kept"),
    [
        (1, 0, [0, 1, 2], [0]),
        (2, 0, [5, 1, 9], [1, 5]),
        (1, 30, [0, 29, 31, 60], [0, 29]),
        (5, 0, [3, 4], [3, 4]),
    ],
)
def test_retention_policy(keep_last: int, keep_days: int, ages: list[int], kept: list[int]) -> None:
    backups = [(f"b{d}", NOW - timedelta(days=d, minutes=1)) for d in ages]
    doomed = remote.to_prune(backups, keep_last=keep_last, keep_days=keep_days, now=NOW)
    assert sorted(int(n[1:]) for n in {f"b{d}" for d in ages} - set(doomed)) == kept


@pytest.mark.parametrize(("keep_last", "keep_days"), [(0, 10), (-1, 10), (1, -1)])
def test_retention_refuses_to_keep_nothing(keep_last: int, keep_days: int) -> None:
    with pytest.raises(archive.BackupRefused, match="keep-last must be >= 1"):
        remote.to_prune([], keep_last=keep_last, keep_days=keep_days, now=NOW)


def test_create_failure_raises_an_alert(tmp_path: Path, backup_keys: Keys, alert_db: str) -> None:
    empty_state = tmp_path / "no-keyd-state"
    empty_state.mkdir()
    result = run_backup(
        "create",
        "--database-url", alert_db,
        "--keyd-state-dir", str(empty_state),
        "--recipient", str(backup_keys.recipient),
        "--signing-key", str(backup_keys.signing_key),
        "--out-dir", str(tmp_path),
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "holds no keyd state.json" in result.stderr
    assert [e for e, _ in alerts(alert_db)] == ["backup.failed"]
    assert not list(tmp_path.glob("*.sbk"))


def test_verify_failure_raises_an_alert(backup_file: Path, backup_keys: Keys, alert_db: str) -> None:
    data = bytearray(backup_file.read_bytes())
    data[100] ^= 1
    backup_file.write_bytes(bytes(data))
    result = run_backup(
        "verify",
        str(backup_file),
        "--signing-pub",
        str(backup_keys.signing_pub),
        "--alert-database-url",
        alert_db,
        check=False,
    )
    assert result.returncode == 1
    assert "REFUSED" in result.stderr
    assert [e for e, _ in alerts(alert_db)] == ["backup.verify_failed"]


def test_a_world_readable_ssh_key_is_refused(sshd: Sshd, backup_file: Path) -> None:
    sshd.client_key.chmod(0o644)
    with pytest.raises(RemoteRefused, match="readable by others"):
        remote.send(backup_file, target(sshd))
    assert "Accepted publickey" not in sshd.log


def test_sending_the_same_backup_again_sends_nothing(sshd: Sshd, backup_file: Path) -> None:
    run_backup("send", str(backup_file), *sshd.options())
    again = run_backup("send", str(backup_file), *sshd.options())
    assert "already there with the same SHA-256; nothing sent" in again.stdout


def test_pinned_host_keys_others_may_rewrite_are_refused(sshd: Sshd, backup_file: Path) -> None:
    sshd.known_hosts.chmod(0o666)
    with pytest.raises(archive.BackupRefused, match="writable by others"):
        remote.send(backup_file, target(sshd))


def test_a_killed_upload_resumes_where_it_stopped(sshd: Sshd, backup_keys: Keys, tmp_path: Path) -> None:
    """A real interruption: `backup send` SIGKILLed mid-transfer, then run again."""
    big = tmp_path / "big" / remote.backup_name(NOW)
    big.parent.mkdir()
    archive.seal(
        os.urandom(40 * 1024 * 1024),
        recipient=archive.load_recipient(str(backup_keys.recipient)),
        signing_key=archive.load_signing_key(backup_keys.signing_key),
        out=big,
    )
    partial = sshd.remote_dir / f"{big.name}.partial"
    job = subprocess.Popen(
        [sys.executable, "-m", "backup", "send", str(big), *sshd.options()],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 1024 * 1024):
            assert job.poll() is None, "the upload ended before it could be killed"
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.005)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(timeout=30)
    assert not (sshd.remote_dir / big.name).exists()  # never published half a backup
    have = partial.stat().st_size
    assert 0 < have < big.stat().st_size
    resumed = run_backup("send", str(big), *sshd.options())
    assert "resumed at byte" in resumed.stdout
    at = int(resumed.stdout.split("resumed at byte ")[1].split(")")[0])
    # What reached the server was kept, not sent again (sftp-server may still have been writing
    # pipelined chunks when `have` was measured).
    assert at >= have
    assert (sshd.remote_dir / big.name).read_bytes() == big.read_bytes()
