"""The installer runs on the system python3 before the project's virtualenv exists
(deploy/strongroom-install): everything it imports up front must be the standard library or the
project's own standard-library-only modules. A third-party import slipped into one of them (pydantic
into the firewall's address rules, once) would only show on a fresh server, so it is checked here, with
the same interpreter and flags the bootstrap uses, plus -S so that no Debian python3-* package helps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SYSTEM_PYTHON = "/usr/bin/python3"


def _system_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", "-B", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    "module",
    [
        "deploy.server.__main__",
        "deploy.server.settings",
        "deploy.server.steps",
        "hardening.firewall.addresses",
    ],
)
def test_the_installer_imports_on_the_bare_system_python(module: str) -> None:
    run = _system_python(f"import {module}")
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_check_would_see_a_third_party_import() -> None:
    for package in ("pydantic", "click", "sqlalchemy"):
        assert _system_python(f"import {package}").returncode != 0, (
            f"{package} is importable: the check proves nothing"
        )


def test_the_installer_answers_help_on_the_bare_system_python() -> None:
    run = _system_python("from deploy.server.__main__ import main; sys.exit(main(['--help']))")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--settings" in run.stdout
