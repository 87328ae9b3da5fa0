"""ca/binding.py: the real subprocess binder, against a stand-in speaking the web app's CLI contract.

The real web app is exercised by test_webapp_binding.py once its `certs` commands exist.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ca.binding import BindError, WebappBinder, default_webapp_command
from tests.ca.conftest import CA

FAKE = Path(__file__).with_name("fake_webapp_cli.py")


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "webapp-state.json"
    path.write_text(json.dumps({"users": ["alice"], "bindings": {}, "argv": []}))
    monkeypatch.setenv("FAKE_WEBAPP_STATE", str(path))
    return path


@pytest.fixture
def real_binder_ca(make_ca: Callable[..., CA], state: Path) -> CA:
    ca = make_ca(webapp_command=[sys.executable, str(FAKE)])
    ca.binder = None  # type: ignore[assignment]  # the CLI builds the real WebappBinder from config.toml
    return ca


def test_default_command_is_flask_in_this_python() -> None:
    assert default_webapp_command() == [sys.executable, "-m", "flask", "--app", "webapp"]


def test_issue_and_revoke_through_the_subprocess_contract(real_binder_ca: CA, state: Path) -> None:
    ca = real_binder_ca
    _, _, serial = ca.issue("alice")
    doc = json.loads(state.read_text())
    fp = json.loads((ca.dir / "index.json").read_text())["certificates"][0]["fingerprint"]
    assert doc["bindings"] == {fp: {"user": "alice", "state": "active"}}
    bind_argv = doc["argv"][0]
    assert bind_argv[:3] == ["certs", "bind", "alice"]
    assert not Path(bind_argv[3]).exists()  # the temporary PEM file is gone

    ca.ok("revoke", serial, "--reason", "affiliationChanged")
    doc = json.loads(state.read_text())
    assert doc["argv"][-1] == ["certs", "unbind", fp, "--reason", "certificate revoked: affiliationChanged"]
    assert doc["bindings"][fp]["state"] == "revoked"


def test_unknown_user_reason_comes_through_and_nothing_is_issued(real_binder_ca: CA) -> None:
    ca = real_binder_ca
    result = ca.run("issue", "zed", "--out", str(ca.work / "zed.p12"))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: the web app refused to bind the certificate to zed: unknown user 'zed' (nothing was issued)"
    )
    assert json.loads((ca.dir / "index.json").read_text())["certificates"] == []


def test_a_missing_web_app_command_is_a_bind_error(tmp_path: Path) -> None:
    binder = WebappBinder([str(tmp_path / "no-such-flask")], cwd=tmp_path)
    with pytest.raises(BindError, match="could not run the web app command: FileNotFoundError"):
        binder.unbind("ab" * 32, "test")


def test_a_hanging_web_app_times_out(tmp_path: Path) -> None:
    binder = WebappBinder([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path, timeout=0.5)
    with pytest.raises(BindError, match="TimeoutExpired"):
        binder.unbind("ab" * 32, "test")


def test_the_reason_is_one_printable_line(tmp_path: Path) -> None:
    noisy = (
        "import sys; sys.stderr.write('Traceback...\\n  junk\\nError: no such user \\x1b[31mred\\n'); "
        "sys.exit(1)"
    )
    binder = WebappBinder([sys.executable, "-c", noisy], cwd=tmp_path)
    with pytest.raises(BindError) as info:
        binder.unbind("ab" * 32, "test")
    assert str(info.value) == "no such user [31mred"
