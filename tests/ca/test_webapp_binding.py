"""End to end: the CA tool binds and unbinds through the REAL web app (`flask --app webapp certs ...`)
on a throwaway SQLite database, found by the web app through its STRONGROOM_* environment."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ca.conftest import CA

ROOT = Path(__file__).resolve().parents[2]
FLASK = [sys.executable, "-m", "flask", "--app", "webapp"]


def _flask(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLASK, *args], cwd=ROOT, input=input, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def webapp_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "webapp.db"
    monkeypatch.setenv("STRONGROOM_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("STRONGROOM_SECRET_KEY", "ca-e2e-test-secret-" + "s" * 32)
    for name, value in {"TIME_COST": "1", "MEMORY_COST": "8", "PARALLELISM": "1"}.items():
        monkeypatch.setenv(f"STRONGROOM_ARGON2_{name}", value)
    done = _flask("db", "upgrade")
    assert done.returncode == 0, done.stderr
    done = _flask(
        "users", "add", "alice", "--role", "clerk", "--password-stdin", input="Quartz-Lantern-Mosaic-4817\n"
    )
    assert done.returncode == 0, done.stderr
    return db


def _bindings() -> dict[str, tuple[str, str]]:
    """fingerprint -> (user, status), from the web app's own `certs list`."""
    done = _flask("certs", "list")
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines() if line.strip()]
    return {row[2]: (row[0], row[1]) for row in rows}


@pytest.fixture
def ca_with_webapp(make_ca: Callable[..., CA], webapp_db: Path) -> CA:
    ca = make_ca()  # default webapp_command: this Python's `-m flask --app webapp`, in the checkout
    ca.binder = None  # type: ignore[assignment]  # the CLI builds the real subprocess binder
    return ca


def _fingerprint(ca: CA, serial: str) -> str:
    out = ca.ok("show", serial).output
    return next(line.split(": ", 1)[1].strip() for line in out.splitlines() if "SHA-256" in line)


def test_issue_binds_and_revoke_unbinds_in_the_real_web_app(ca_with_webapp: CA) -> None:
    ca = ca_with_webapp
    _, _, serial = ca.issue("alice")
    fp = _fingerprint(ca, serial)
    assert _bindings() == {fp: ("alice", "active")}

    _, _, renewed = ca.issue("alice", "--replace")
    new_fp = _fingerprint(ca, renewed)
    assert _bindings() == {fp: ("alice", "replaced"), new_fp: ("alice", "active")}

    ca.ok("revoke", "alice", "--reason", "affiliationChanged")
    assert _bindings()[new_fp] == ("alice", "revoked")
    assert "bound in web app: no" in ca.ok("show", renewed).output


def test_an_unknown_user_is_refused_by_the_web_app_and_nothing_is_issued(ca_with_webapp: CA) -> None:
    ca = ca_with_webapp
    result = ca.run("issue", "zed", "--out", str(ca.work / "zed.p12"))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: the web app refused to bind the certificate to zed: no such user: zed (nothing was issued)"
    )
    assert not (ca.work / "zed.p12").exists()
    assert "zed" not in ca.ok("list", "--all").output
    assert _bindings() == {}


def test_revocation_stands_when_the_web_app_database_is_gone(ca_with_webapp: CA, webapp_db: Path) -> None:
    ca = ca_with_webapp
    _, _, serial = ca.issue("alice")
    webapp_db.rename(webapp_db.with_suffix(".away"))
    result = ca.run("revoke", "alice", "--reason", "keyCompromise")
    assert result.exit_code == 3
    assert f"python -m ca unbind {serial}" in result.stderr
    webapp_db.with_suffix(".away").rename(webapp_db)
    ca.ok("unbind", serial)
    assert _bindings()[_fingerprint(ca, serial)] == ("alice", "revoked")
