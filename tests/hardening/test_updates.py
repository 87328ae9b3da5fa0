"""The unattended-upgrades configuration, read by apt's own parser and by unattended-upgrade itself,
beside Debian's default file: only Debian-Security is allowed, no automatic reboot, daily runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hardening.updates import FILES
from tests.support import component_missing, need_binary

DEBIAN_DEFAULT = Path("/etc/apt/apt.conf.d/50unattended-upgrades")  # shipped by unattended-upgrades
SECURITY_ONLY = "origin=Debian,codename=${distro_codename}-security,label=Debian-Security"


@pytest.fixture
def apt_env(tmp_path: Path) -> dict[str, str]:
    """An APT_CONFIG whose parts directory holds Debian's default file and ours, and nothing else."""
    need_binary("apt-config")
    if not DEBIAN_DEFAULT.is_file():
        component_missing("unattended-upgrades is not installed (no 50unattended-upgrades)")
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    for source in (DEBIAN_DEFAULT, *FILES):
        shutil.copy(source, parts / source.name)
    main = tmp_path / "apt.conf"
    main.write_text(f'Dir::Etc::Parts "{parts}";\n')
    return {**os.environ, "APT_CONFIG": str(main)}


def dump(env: dict[str, str]) -> list[str]:
    result = subprocess.run(["apt-config", "dump"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # apt reports syntax errors on stderr
    return result.stdout.splitlines()


def test_apt_reads_the_files_and_only_security_origins_remain(apt_env: dict[str, str]) -> None:
    lines = dump(apt_env)
    patterns = [line for line in lines if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")]
    assert patterns == [f'Unattended-Upgrade::Origins-Pattern:: "{SECURITY_ONLY}";']
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in lines
    assert 'APT::Periodic::Unattended-Upgrade "1";' in lines
    assert 'APT::Periodic::Update-Package-Lists "1";' in lines


def test_without_our_file_debian_would_take_every_stable_update(
    apt_env: dict[str, str], tmp_path: Path
) -> None:
    # Proves the #clear matters: Debian's default alone also allows label=Debian (point releases).
    (tmp_path / "apt.conf.d" / "51strongroom-unattended-upgrades").unlink()
    patterns = [line for line in dump(apt_env) if "Origins-Pattern::" in line]
    assert any('label=Debian"' in line for line in patterns)


def test_a_syntax_error_is_reported_by_apt(apt_env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "apt.conf.d" / "51strongroom-unattended-upgrades"
    broken.write_text(broken.read_text().replace('"false";', '"false"', 1))
    result = subprocess.run(["apt-config", "dump"], env=apt_env, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "Syntax error" in result.stderr


def test_unattended_upgrade_itself_allows_only_debian_security(apt_env: dict[str, str]) -> None:
    # unattended-upgrade prints its allowed origins first, then spends a minute checking every package:
    # read that line and stop it (a dry run: nothing is installed).
    proc = subprocess.Popen(
        [need_binary("unattended-upgrade"), "--dry-run", "--debug"],
        env=apt_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    allowed = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Allowed origins are:"):
                allowed = line.strip()
                break
    finally:
        proc.kill()
        proc.communicate()
    assert allowed is not None
    assert allowed.startswith("Allowed origins are: origin=Debian,codename=")
    assert allowed.endswith("-security,label=Debian-Security")
    assert allowed.count("origin=") == 1
