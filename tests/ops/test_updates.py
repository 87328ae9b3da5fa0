"""Updates: apt's simulated upgrade parsed strictly (table of lines), and one real query of this host."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from ops.checks import CheckFailed
from ops.checks.updates import Pending, parse
from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.ops.conftest import queued
from tests.support import need_binary

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Inst bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.15/oldstable [amd64])",
            Pending("bash", "5.2.15-2+b13", security=False),
        ),
        (
            "Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, "
            "Debian-Security:12/oldstable-security [amd64])",
            Pending("libgcrypt20", "1.10.1-3+deb12u1", security=True),
        ),
        (
            "Inst liblzma-dev [5.4.1-1] (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64]) []",
            Pending("liblzma-dev", "5.4.1-1+deb12u2", security=True),
        ),
        ("Inst newpkg (1.0-1 Debian:12/stable [all])", Pending("newpkg", "1.0-1", security=False)),
        (
            "Inst libext2fs2 [1.47.0-2] (1.47.0-2+b2 Debian:12.15/oldstable [amd64]) "
            "[e2fsprogs:amd64 on libext2fs2:amd64] [e2fsprogs:amd64 ]",
            Pending("libext2fs2", "1.47.0-2+b2", security=False),
        ),
        ("Inst openssl (3.0.17-1 jammy-security [amd64])", Pending("openssl", "3.0.17-1", security=True)),
    ],
)
def test_inst_lines(line: str, expected: Pending) -> None:
    assert parse(f"Reading package lists...\n{line}\nConf bash (5.2)\n") == [expected]


@pytest.mark.parametrize(
    "line",
    [
        "Inst",
        "Inst bash",
        "Inst BASH [1] (2 Debian:12 [amd64])",
        "Inst bash [1] ()",
        "Inst bash [1] (2 Debian:12 [amd64]",
        "Inst ../../etc (1 x)",
        "Inst bash [1] (2 Debian:12 [amd64]) trailing words",
    ],
)
def test_unexpected_inst_lines_fail_the_check(line: str) -> None:
    with pytest.raises(CheckFailed):
        parse(line + "\n")


def test_no_inst_lines_is_nothing_pending() -> None:
    assert parse("Reading package lists...\n0 upgraded, 0 newly installed, 0 to remove.\n") == []


def test_a_real_apt_query_of_this_host(make_settings: Callable[..., Settings], engine: sa.Engine) -> None:
    apt = need_binary("apt-get")
    s = make_settings(apt_binary=apt)
    run_pass(s, state=StateDir(s.state_dir), engine=engine, now=NOW, only=("updates",))
    out = subprocess.run(
        [apt, "-s", "-o", "Debug::NoLocking=true", "upgrade"],
        capture_output=True,
        text=True,
        check=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    ).stdout
    inst = [ln for ln in out.splitlines() if ln.startswith("Inst ")]
    security = [ln for ln in inst if "-Security" in ln or "-security" in ln]
    rows = queued(engine)
    expected = []
    if inst:
        expected.append(("ops.updates_pending", f"packages={len(inst)}"))
    if security:
        expected.append(("ops.security_updates_pending", f"packages={len(security)}"))
    assert [(e, d.split(":")[0]) for e, _, d in rows] == expected
    # Pending updates stay pending: the next pass does not mail again.
    run_pass(s, state=StateDir(s.state_dir), engine=engine, now=NOW, only=("updates",))
    assert len(queued(engine)) == len(rows)


def test_apt_missing_is_an_alert(make_settings: Callable[..., Settings], engine: sa.Engine) -> None:
    s = make_settings(apt_binary="/nonexistent/apt-get")
    run_pass(s, state=StateDir(s.state_dir), engine=engine, now=NOW, only=("updates",))
    assert queued(engine) == [("ops.check_failed", "updates", "apt-get is missing")]
