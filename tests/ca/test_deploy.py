"""ca/deploy/: the CRL timer (systemd) and its cron twin run a command the CA tool really accepts."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from tests.ca.conftest import CA

DEPLOY = Path(__file__).resolve().parents[2] / "ca" / "deploy"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text())
    return parser


def _ca_args(argv: list[str], ca: CA) -> list[str]:
    """The arguments after `python -m ca`, with the production paths swapped for the test CA's."""
    start = argv.index("-m") + 2
    assert argv[start - 1] == "ca"
    swap = {
        "${CREDENTIALS_DIRECTORY}/issuing-passphrase": str(ca.issuing_pass),
        "/etc/strongroom/ca-issuing.passphrase": str(ca.issuing_pass),
    }
    return [swap.get(a, a) for a in argv[start:]]


def test_service_refreshes_the_crl_when_due_with_a_systemd_credential(
    ca: CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _unit("strongroom-ca-crl.service")["Service"]
    assert service["Type"] == "oneshot"
    assert service["LoadCredential"] == "issuing-passphrase:/etc/strongroom/ca-issuing.passphrase"
    assert service["Environment"] == "STRONGROOM_CA_DIR=/var/lib/strongroom-ca"
    assert service["UMask"] == "0077"
    args = _ca_args(shlex.split(service["ExecStart"]), ca)
    assert args[-2:] == ["crl", "--if-due"]
    monkeypatch.setenv("STRONGROOM_CA_DIR", str(ca.dir))
    ca.clock.advance(hours=25)
    result = ca.run(*args, passphrase=False)
    assert result.exit_code == 0, result.output
    assert "published a new CRL" in result.output


def test_timer_runs_hourly_and_catches_up_after_downtime() -> None:
    timer = _unit("strongroom-ca-crl.timer")
    assert timer["Timer"]["OnCalendar"] == "hourly"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_cron_entry_runs_the_same_command(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        ln
        for ln in (DEPLOY / "strongroom-ca-crl.cron").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    jobs = [ln for ln in lines if "=" not in ln.split()[0]]
    assert len(jobs) == 1
    fields = jobs[0].split(None, 6)
    assert fields[:5] == ["17", "*", "*", "*", "*"]  # hourly
    assert fields[5] == "root"
    command = shlex.split(fields[6].split("&&", 1)[1])
    env = dict(a.split("=", 1) for a in command if "=" in a and not a.startswith("-"))
    assert env == {"STRONGROOM_CA_DIR": "/var/lib/strongroom-ca"}
    argv = [a for a in command if a not in {f"{k}={v}" for k, v in env.items()}]
    monkeypatch.setenv("STRONGROOM_CA_DIR", str(ca.dir))
    result = ca.run(*_ca_args(argv, ca), passphrase=False)
    assert result.exit_code == 0, result.output
    assert "MAILTO=root" in lines
