"""`python -m backup keygen` and `prune` through the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from backup import remote
from backup.cli import main
from tests.backup.conftest import Sshd
from tests.backup.test_e2e import run_backup


@pytest.mark.parametrize(
    ("kind", "secret", "public"),
    [
        ("offline", "backup-identity.txt", "backup-recipient.txt"),
        ("signing", "backup-signing.key", "backup-signing.pub"),
    ],
)
def test_keygen_writes_private_files_and_never_replaces_a_key(
    tmp_path: Path, kind: str, secret: str, public: str
) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["keygen", kind, "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert (tmp_path / secret).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / public).exists()
    before = (tmp_path / secret).read_bytes()
    second = runner.invoke(main, ["keygen", kind, "--out", str(tmp_path)])
    assert second.exit_code == 1
    assert "refusing to replace a backup key" in second.output
    assert (tmp_path / secret).read_bytes() == before


def test_prune_remote_and_local(sshd: Sshd, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    local = tmp_path / "local"
    local.mkdir()
    names = [remote.backup_name(now - timedelta(days=d)) for d in (0, 50, 60)]
    for n in names:
        (sshd.remote_dir / n).write_bytes(b"x")
        (local / n).write_bytes(b"x")
    (local / "keep-me.txt").write_bytes(b"x")
    result = run_backup(
        "prune", *sshd.options(), "--keep-last", "1", "--keep-days", "35", "--local-dir", str(local)
    )
    assert "4 pruned" in result.stdout
    assert sorted(p.name for p in sshd.remote_dir.iterdir()) == [names[0]]
    assert sorted(p.name for p in local.iterdir()) == sorted([names[0], "keep-me.txt"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--keep-last", "0"], "0 is not in the range"),
        (["send", "/nonexistent.sbk"], "does not exist"),
        (["create"], "Missing option"),
        (["restore", "/nonexistent.sbk"], "does not exist"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
