"""`python -m keyd`: help an operator can follow, and refusals that say what is wrong."""

from __future__ import annotations

import subprocess
import sys

from tests.keyd.conftest import ROOT, Keyd, raw_key


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyd", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_help_lists_every_command_and_the_boot_procedure() -> None:
    out = _run("--help").stdout
    for command in ("serve", "init", "status", "unseal", "versions", "seal", "rotate", "retire"):
        assert command in out
    assert "cat > /dev/shm/ekey-tmp" in out  # the manual way stays documented as the fallback
    assert "0 unsealed, 3 sealed, 4 keyd unreachable" in out
    assert "--min-version" in _run("retire", "--help").stdout


def test_bad_config_is_refused() -> None:
    result = _run("status", "--mode", "file", "--budget", "employee.week=3")
    assert result.returncode == 2
    assert "command line: budgets: employee has only the windows minute, hour and day" in result.stderr


def test_init_refusals(keyd_factory: object) -> None:
    k: Keyd = keyd_factory()  # type: ignore[operator]
    k.drop(b"too short\n")
    short = k.cli("init", "--wait", "5", "--key-kind", "passphrase", "--scrypt-n", "16384", check=False)
    assert short.returncode == 1
    assert "at least 16 characters" in short.stderr
    assert not (k.state_dir / "state.json").exists()
    k.drop(raw_key(), mode=0o644)
    exposed = k.cli("init", "--wait", "5", "--key-kind", "raw", check=False)
    assert exposed.returncode == 1
    assert "drop file refused (bad_mode)" in exposed.stderr
    k.drop_path.unlink()
    k.init(raw_key(), "--key-kind", "raw")
    again = k.cli("init", "--wait", "1", "--key-kind", "raw", check=False)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr


def test_keyd_never_takes_over_a_shared_directory(keyd_factory: object) -> None:
    """keyd sets owner and mode of its socket and state dirs: it refuses ones that hold other files."""
    k: Keyd = keyd_factory()  # type: ignore[operator]
    k.state_dir.mkdir(mode=0o755)
    (k.state_dir / "someone-elses.db").write_text("x")
    k.drop(raw_key())
    refused = k.cli("init", "--wait", "5", "--key-kind", "raw", check=False)
    assert refused.returncode == 1
    assert "give keyd a directory of its own" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert k.drop_path.exists()  # the secret was not consumed for nothing
    assert oct(k.state_dir.stat().st_mode & 0o777) == "0o755"
    (k.state_dir / "someone-elses.db").unlink()
    k.init(raw_key(), "--key-kind", "raw")
    k.socket.parent.mkdir(mode=0o755)
    (k.socket.parent / "other.sock").write_text("")
    result = k.cli("serve", check=False)
    assert result.returncode == 1
    assert "give keyd a directory of its own" in result.stderr
    assert oct(k.socket.parent.stat().st_mode & 0o777) == "0o755"
