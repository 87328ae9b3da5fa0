"""deploy/strongroom-health-agent.service.in as the install renders it for a node behind a balancer
(deploy/server/steps.py, settings [balancer]): systemd accepts it, it carries the web app's sandboxing
with TCP to the balancers only (docs/runbook.md section 10), `systemd-analyze security` rates it, and
what it runs exists and parses its --agent."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.settings import Balancer
from tests.deploy.test_units import COMMON
from tests.deploy.test_units import options as shipped_options
from tests.support import need_binary
from webapp.health_agent import parse_listen

ROOT = Path(__file__).resolve().parents[2]
BALANCER = Balancer(("192.0.2.2", "192.0.2.3"), "192.0.2.14", 9707)
UNIT = "strongroom-health-agent.service"


def rendered(balancer: Balancer = BALANCER) -> str:
    return steps.health_agent_unit(ROOT, balancer)


def options(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def checkout_copy(tmp_path: Path) -> Path:
    # Installed under /opt/strongroom; here the checkout stands in so that ExecStart= exists.
    copy = tmp_path / UNIT
    copy.write_text(rendered().replace("/opt/strongroom", str(ROOT)))
    return copy


def test_the_rendered_unit_verifies(tmp_path: Path) -> None:
    analyze = need_binary("systemd-analyze")
    res = subprocess.run([analyze, "verify", str(checkout_copy(tmp_path))], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr


SPECIFIC = {
    # The web app's user, settings and keyd access (deploy/strongroom-web.service).
    "User": ["strongroom-web"],
    "Group": ["strongroom-web"],
    "SupplementaryGroups": ["strongroom-keyd-clients"],
    "EnvironmentFile": ["/etc/strongroom/webapp.env"],
    "Restart": ["always"],
    "AppArmorProfile": ["strongroom-health-agent"],
    "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    "IPAddressAllow": ["192.0.2.2 192.0.2.3"],
    "PrivateNetwork": None,  # it listens on the host's network, for the balancers
    "SystemCallFilter": ["@system-service", "~@privileged"],
    "ReadWritePaths": None,
    "ExecStart": ["/opt/strongroom/.venv/bin/flask --app webapp health --agent 192.0.2.14:9707"],
}


@pytest.mark.parametrize(("key", "want"), [*COMMON.items(), *SPECIFIC.items()])
def test_sandboxing_option(key: str, want: list[str] | None) -> None:
    assert options(rendered()).get(key) == want


def test_the_same_sandbox_as_the_web_app_but_the_network() -> None:
    web = shipped_options("strongroom-web.service")
    agent = options(rendered())
    network = {"RestrictAddressFamilies", "PrivateNetwork", "IPAddressAllow"}
    # What gunicorn alone needs: its notify type, its socket directory, chown of its own files.
    gunicorn = {"Type", "NotifyAccess", "ReadWritePaths", "StateDirectory", "StateDirectoryMode"}
    gunicorn |= {"ExecStart", "ExecReload", "Restart", "TimeoutStopSec", "SystemCallFilter", "Environment"}
    own = {"Description", "Documentation", "After", "Wants", "AppArmorProfile"}
    differ = {k for k in web.keys() | agent.keys() if web.get(k) != agent.get(k)}
    assert differ <= network | gunicorn | own, differ - network - gunicorn - own
    for key in ("PrivateUsers", "ExecStartPre", "ExecStartPost", "PermissionsStartOnly"):
        assert key not in agent


def test_security_exposure(tmp_path: Path) -> None:
    analyze = need_binary("systemd-analyze")
    res = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(checkout_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m is not None, res.stdout + res.stderr
    # The mailer's ceiling: like it, the agent may use IP (to the listed peers only).
    assert float(m[1]) <= 1.5


@pytest.mark.parametrize(
    ("balancer", "listen"),
    [
        (BALANCER, ("192.0.2.14", 9707)),
        (Balancer(("2001:db8::2",), "2001:db8::14", 9800), ("2001:db8::14", 9800)),
    ],
)
def test_the_agent_takes_its_address(balancer: Balancer, listen: tuple[str, int]) -> None:
    argv = shlex.split(options(rendered(balancer))["ExecStart"][0])
    assert argv[:5] == ["/opt/strongroom/.venv/bin/flask", "--app", "webapp", "health", "--agent"]
    assert parse_listen(argv[5]) == listen
    assert (ROOT / ".venv/bin/flask").exists()


def test_install_sh_leaves_the_template_alone() -> None:
    """Only the install command renders it, for [balancer]: install.sh's unit globs take *.service."""
    assert not (ROOT / "deploy" / UNIT).exists()
    assert '"$SRC"/deploy/*.service ' in (ROOT / "deploy/install.sh").read_text()
