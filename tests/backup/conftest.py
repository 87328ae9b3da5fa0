"""Fixtures for backups: a REAL OpenSSH sshd on loopback as the off-site server (its own host key,
config and authorized key, started and stopped here), backup key pairs, a keyd and databases."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.mariadb import PrivateMariaDB, mariadb  # noqa: F401 - the session fixture
from tests.support import need_binary, need_root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> str:
    """An ed25519 key pair at `path` (+ .pub); returns the public line."""
    subprocess.run(
        [need_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


@dataclass(frozen=True)
class SshKeys:
    """What a loopback sshd at `base` (tests/ops' log host too) needs: its host key `host_ed25519`,
    root's `authorized_keys` holding the client key, and known_hosts files pinning 127.0.0.1:port."""

    client_key: Path
    known_hosts: Path  # pins the real host key
    wrong_known_hosts: Path  # pins another key for the same host:port


def ssh_keys(base: Path, port: int) -> SshKeys:
    host_pub = keygen(base / "host_ed25519")
    other_pub = keygen(base / "other_host_ed25519")
    client_pub = keygen(base / "client_ed25519")
    (base / "authorized_keys").write_text(client_pub + "\n")
    known, wrong = base / "known_hosts", base / "wrong_known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    wrong.write_text(f"[127.0.0.1]:{port} {other_pub}\n")
    return SshKeys(base / "client_ed25519", known, wrong)


@contextmanager
def running_sshd(binary: str, conf: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """sshd in the foreground with `conf` (refused by `sshd -t` first), yielded once it sends its
    banner on 127.0.0.1:port, stopped on leaving; its log goes to `log`."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run([binary, "-t", "-f", str(conf)], check=True, capture_output=True)
    proc = subprocess.Popen([binary, "-D", "-f", str(conf), "-E", str(log)])
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"sshd exited: {log.read_text(errors='replace') if log.exists() else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("sshd did not answer")
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
    conf = base / "sshd_config"
    conf.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {base / 'host_ed25519'}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {base / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "AllowUsers root",
                # pytest's tmp dirs are not root-owned all the way up the path.
                "StrictModes no",
                "DisableForwarding yes",
                "AllowTcpForwarding no",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
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
