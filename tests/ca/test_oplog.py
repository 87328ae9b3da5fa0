"""ca/oplog.py: who did what, when - to the file and to syslog, even when the CA dir is refused."""

from __future__ import annotations

import json
import syslog
from collections.abc import Callable

import pytest

from tests.ca.conftest import CA, set_config


@pytest.fixture
def syslogged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a, **k: None)
    monkeypatch.setattr(syslog, "syslog", lambda prio, msg: sent.append((prio, msg)))
    return sent


def test_sudo_user_is_recorded_as_the_actor(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "carol")
    ca.issue("alice")
    last = json.loads((ca.dir / "ops.log").read_text().splitlines()[-1])
    assert last["event"] == "ca.issue"
    assert last["who"].startswith("carol (via sudo as ")


def test_operations_also_go_to_syslog(make_ca: Callable[..., CA], syslogged: list[tuple[int, str]]) -> None:
    ca = make_ca(syslog=True)
    ca.issue("alice")
    events = [json.loads(msg)["event"] for _, msg in syslogged]
    assert events == ["ca.init", "ca.issue"]
    assert syslogged[0][0] == syslog.LOG_NOTICE


def test_a_refusal_on_an_unsafe_ca_dir_still_reaches_syslog(ca: CA, syslogged: list[tuple[int, str]]) -> None:
    set_config(ca.dir, syslog=True)
    (ca.dir / "index.json").chmod(0o644)
    result = ca.run("list")
    assert result.exit_code == 1
    [(_, msg)] = syslogged
    entry = json.loads(msg)
    assert entry["event"] == "ca.refused"
    assert entry["command"] == "list"
    assert "has mode 0644" in entry["why"]
