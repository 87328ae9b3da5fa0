"""Fixtures for backups: a REAL OpenSSH sshd on loopback as the off-site server (its own host key,
config and authorized key, started and stopped here), backup key pairs, a keyd and databases."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.mariadb import PrivateMariaDB, mariadb  # noqa: F401 - the session fixture
from tests.fixtures.sshd import root_sshd_config, running_sshd, ssh_keys
from tests.support import free_port, need_binary, need_root


@dataclass
class Sshd:
    base: Path
    port: int
    remote_dir: Path
    client_key: Path
    known_hosts: Path  # pins the real host key
    wrong_known_hosts: Path  # pins another key for the same host:port
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        path = self.base / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def options(self, *, known_hosts: Path | None = None) -> list[str]:
        return [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--user",
            "root",
            "--ssh-key",
            str(self.client_key),
            "--known-hosts",
            str(known_hosts or self.known_hosts),
            "--remote-dir",
            str(self.remote_dir),
        ]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    need_root()  # sshd's privilege separation needs root; the test logs in as root with a key
    binary = need_binary("sshd")
    base = tmp_path / "sshd"
    base.mkdir()
    remote_dir = tmp_path / "offsite"
    remote_dir.mkdir()
    port = free_port()
    keys = ssh_keys(base, port)
    conf = root_sshd_config(base, port=port, root_login="prohibit-password", sftp=True)
    with running_sshd(binary, conf, port, base / "sshd.log") as proc:
        yield Sshd(base, port, remote_dir, keys.client_key, keys.known_hosts, keys.wrong_known_hosts, proc)


@dataclass(frozen=True)
class Keys:
    identity: Path  # offline
    recipient: Path
    signing_key: Path
    signing_pub: Path


@pytest.fixture
def backup_keys(tmp_path: Path) -> Keys:
    from click.testing import CliRunner

    from backup.cli import main

    runner = CliRunner()
    offline, server = tmp_path / "offline", tmp_path / "server-keys"
    assert runner.invoke(main, ["keygen", "offline", "--out", str(offline)]).exit_code == 0
    assert runner.invoke(main, ["keygen", "signing", "--out", str(server)]).exit_code == 0
    return Keys(
        offline / "backup-identity.txt",
        offline / "backup-recipient.txt",
        server / "backup-signing.key",
        server / "backup-signing.pub",
    )


@pytest.fixture(autouse=True)
def _no_backup_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STRONGROOM_"):
            monkeypatch.delenv(name)
