"""strongroom-remote-copy against a REAL OpenSSH sshd on loopback set up like the log host's pull
account (read-only SFTP, chrooted to the log directory, pinned host key), then the `remote` check on
the fetched copy: equal copies are quiet, a tampered local line is REMOTE_LOG_MISMATCH, a copy that
stopped being fetched is REMOTE_COPY_STALE."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from backup.remote import Target, connect
from ops import remote_copy
from ops.remote_copy import RemoteCopyFailed
from ops.runner import run_pass
from ops.settings import Settings as WatchSettings
from ops.state import StateDir
from tests.fixtures.sshd import running_sshd, ssh_keys
from tests.ops.conftest import queued
from tests.support import free_port, need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
VAULT = "vault.test"


def _line(i: int, text: str = "event") -> str:
    return (
        f"{(T0 + timedelta(seconds=i)).isoformat(timespec='microseconds')} {VAULT} strongroom - {text} {i}\n"
    )


@dataclass
class LogHost:
    chroot: Path  # what rsyslog's /var/log/remote is on the log host
    port: int
    settings: dict[str, Any]  # remote-copy.toml's values
    wrong_known_hosts: Path

    @property
    def log(self) -> Path:
        return self.chroot / VAULT / "forwarded.log"


@pytest.fixture
def loghost(tmp_path: Path) -> Iterator[LogHost]:
    need_root()  # sshd's privilege separation and chroot need root; the pull account is root here
    binary = need_binary("sshd")
    base = tmp_path / "sshd"
    base.mkdir()
    # sshd refuses a chroot with a group/other-writable component (/tmp is one): /run is not.
    chroot = Path(tempfile.mkdtemp(prefix="strongroom-loghost-", dir="/run"))
    os.chmod(chroot, 0o755)  # noqa: S103 - sshd's rule for a chroot: root's, not writable by others
    (chroot / VAULT).mkdir(mode=0o750)
    port = free_port()
    keys = ssh_keys(base, port)
    conf = base / "sshd_config"
    # The log host's sshd_config for the pull account, as docs/monitoring.md shows it (`Match User
    # strongroom-logpull` there; root here, the only account a test may log in as).
    conf.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {base / "host_ed25519"}
PidFile {base / "sshd.pid"}
AuthorizedKeysFile {base / "authorized_keys"}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers root
StrictModes no
LogLevel VERBOSE
Subsystem sftp internal-sftp
Match User root
    ForceCommand internal-sftp -R
    ChrootDirectory {chroot}
    DisableForwarding yes
    PermitTTY no
"""
    )
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "user": "root",
        "key_file": str(keys.client_key),
        "known_hosts": str(keys.known_hosts),
        "remote_path": f"/{VAULT}/forwarded.log",
        "dest": str(tmp_path / "watch" / "remote" / "forwarded.log"),
        "timeout": 10,
    }
    try:
        with running_sshd(binary, conf, port, base / "sshd.log"):
            yield LogHost(chroot, port, settings, keys.wrong_known_hosts)
    finally:
        shutil.rmtree(chroot, ignore_errors=True)


def _watch(make_settings: Callable[..., WatchSettings], local: Path, copy: str) -> WatchSettings:
    return make_settings(
        remote_local_log=str(local),
        remote_copy=copy,
        remote_grace_seconds=60,
        remote_copy_max_age_seconds=900,
    )


def _check(s: WatchSettings, engine: sa.Engine, now: datetime) -> None:
    run_pass(s, state=StateDir(s.state_dir), engine=engine, now=now, only=("remote",))


def test_fetch_then_compare_and_a_tampered_local_line_rings(
    loghost: LogHost, tmp_path: Path, make_settings: Callable[..., WatchSettings], engine: sa.Engine
) -> None:
    lines = [_line(i) for i in range(20)]
    loghost.log.write_text("".join(lines))
    local = tmp_path / "forwarded.log"
    local.write_text("".join(lines))
    settings = remote_copy.parse(loghost.settings)
    assert remote_copy.fetch(settings) == len("".join(lines))
    assert settings.dest.read_text() == "".join(lines)
    assert oct(settings.dest.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in settings.dest.parent.iterdir()] == ["forwarded.log"]  # no temp file left
    s = _watch(make_settings, local, str(settings.dest))
    now = datetime.now(UTC)
    _check(s, engine, now)
    assert queued(engine) == []

    # An intruder edits a line here; the log host's copy still has the original.
    local.write_text("".join(lines[:5]) + _line(5, "nothing to see") + "".join(lines[6:]))
    remote_copy.fetch(settings)
    _check(s, engine, now)
    # The original is missing here (the alarm), and the edited line has no twin at the log host.
    assert queued(engine) == [
        ("ops.remote_log_mismatch", str(local), "lines_missing_or_changed_here=1"),
        ("ops.remote_log_behind", str(settings.dest), "lines_not_at_remote=1"),
    ]


def test_the_pull_account_cannot_write_at_the_log_host(loghost: LogHost) -> None:
    loghost.log.write_text(_line(1))
    st = remote_copy.parse(loghost.settings)
    target = Target(st.host, st.port, st.user, st.key_file, st.known_hosts, "/")
    with connect(target, timeout=10) as sftp:
        assert sftp.listdir("/") == [VAULT]  # the chroot: the log directory, nothing else
        with pytest.raises(OSError):  # noqa: PT011 - paramiko maps SFTP's refusal to a bare IOError
            sftp.open(f"/{VAULT}/forwarded.log", "ab").write(b"forged\n")
        with pytest.raises(OSError):  # noqa: PT011
            sftp.remove(f"/{VAULT}/forwarded.log")
    assert loghost.log.read_text() == _line(1)


def test_a_failing_fetch_keeps_the_old_copy_and_the_check_says_it_is_stale(
    loghost: LogHost, tmp_path: Path, make_settings: Callable[..., WatchSettings], engine: sa.Engine
) -> None:
    loghost.log.write_text(_line(1))
    settings = remote_copy.parse(loghost.settings)
    remote_copy.fetch(settings)
    impostor = remote_copy.parse({**loghost.settings, "known_hosts": str(loghost.wrong_known_hosts)})
    loghost.log.write_text(_line(1) + _line(2))
    with pytest.raises(RemoteCopyFailed, match="does not match the pinned key"):
        remote_copy.fetch(impostor)
    assert settings.dest.read_text() == _line(1)
    local = tmp_path / "forwarded.log"
    after_fetch = datetime.now(UTC) + timedelta(seconds=30)
    local.write_text(
        _line(1) + f"{after_fetch.isoformat(timespec='microseconds')} {VAULT} strongroom - new\n"
    )
    s = _watch(make_settings, local, str(settings.dest))
    later = datetime.now(UTC) + timedelta(seconds=900 + 60)
    _check(s, engine, later)
    _check(s, engine, later)  # lasting: alerted once
    (event, resource, detail), *rest = queued(engine)
    assert (event, resource) == ("ops.remote_copy_stale", str(settings.dest))
    assert detail.startswith("age_seconds=")
    # Compared only up to the fetch: the newer local line cannot be at the log host's old copy yet,
    # and is not reported as "behind" (the stale alert says what is wrong).
    assert rest == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"max_bytes": 10}, "over 10 bytes"),
        ({"remote_path": f"/{VAULT}/absent.log"}, "does not exist on the log host"),
        ({"remote_path": f"/{VAULT}"}, "is not a regular file"),
        ({"user": "nobody"}, "failed"),  # not an authorised account
    ],
    ids=["too-big", "missing", "a-directory", "other-account"],
)
def test_refused_fetches_leave_the_previous_copy(
    loghost: LogHost, change: dict[str, Any], reason: str
) -> None:
    loghost.log.write_text(_line(1) + _line(2))
    good = remote_copy.parse(loghost.settings)
    good.dest.parent.mkdir(mode=0o700, parents=True)
    good.dest.write_text("previous\n")
    with pytest.raises(RemoteCopyFailed, match=reason):
        remote_copy.fetch(remote_copy.parse({**loghost.settings, **change}))
    assert good.dest.read_text() == "previous\n"
    assert [p.name for p in good.dest.parent.iterdir()] == ["forwarded.log"]


def test_the_command_line_exit_status(loghost: LogHost, tmp_path: Path) -> None:
    loghost.log.write_text(_line(1))
    conf = tmp_path / "remote-copy.toml"
    conf.write_text("".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in loghost.settings.items()))
    cmd = [sys.executable, "-m", "ops.remote_copy", "--config", str(conf), "fetch"]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert (ok.returncode, ok.stdout) == (0, f"fetched {len(_line(1))} bytes\n"), ok.stderr
    conf.write_text(conf.read_text() + 'surprise = "x"\n')
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert (bad.returncode, bad.stderr) == (1, f"Error: {conf}: surprise: is not a known setting\n")


BASE = {
    "host": "loghost.example.internal",
    "user": "strongroom-logpull",
    "key_file": "/etc/strongroom/remote-copy/ssh_ed25519",
    "known_hosts": "/etc/strongroom/remote-copy/known_hosts",
    "remote_path": "/vault.example.internal/forwarded.log",
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"host": "-oProxyCommand=sh"}, "host"),
        ({"host": "a b"}, "host"),
        ({"host": ""}, "host"),
        ({"user": "root;id"}, "user"),
        ({"user": "-l"}, "user"),
        ({"key_file": "relative/key"}, "key_file"),
        ({"known_hosts": 7}, "known_hosts"),
        ({"remote_path": "/a/../../etc/shadow"}, "remote_path"),
        ({"remote_path": "relative.log"}, "remote_path"),
        ({"remote_path": "/dir/"}, "remote_path"),
        ({"port": 0}, "port"),
        ({"port": True}, "port"),
        ({"max_bytes": 1 << 40}, "max_bytes"),
        ({"timeout": 0}, "timeout"),
        ({"dest": "forwarded.log"}, "dest"),
        ({"extra": 1}, "extra: is not a known setting"),
        ({"host": None}, "host"),
    ],
)
def test_settings_are_strict(change: dict[str, Any], reason: str) -> None:
    raw = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(RemoteCopyFailed, match=reason) as refused:
        remote_copy.parse(raw)
    bad = next(iter(change.values()))
    if isinstance(bad, str) and bad:
        assert bad not in str(refused.value)  # a refusal names the key and the rule, never the value


def test_the_example_settings_parse() -> None:
    import tomllib

    raw = tomllib.loads((ROOT / "ops" / "deploy" / "remote-copy.toml").read_text())
    s = remote_copy.parse(raw)
    assert s.dest == remote_copy.DEFAULT_DEST
    assert str(s.dest) == "/var/lib/strongroom-watch/remote/forwarded.log"
