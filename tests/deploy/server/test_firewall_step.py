"""deploy/server/steps.py `firewall` on a throwaway root: the rules it writes confine the service users
to loopback by their numeric uids (read from the target's /etc/passwd), nft accepts them, a second run
changes nothing, and a missing or root-uid service user stops the install instead of shipping a ruleset
without the rule (docs/hardening.md, "Firewall")."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.plan import InstallError, Plan
from deploy.server.settings import parse
from tests.support import need_binary, need_root

CHECKOUT = Path(__file__).resolve().parents[3]
SETTINGS = parse((CHECKOUT / "deploy/server/server.toml.example").read_text())
WEB_UID, KEYD_UID = 991, 992
NFT = "etc/strongroom/firewall/strongroom.nft"


def make_root(tmp_path: Path, users: dict[str, int]) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    lines = ["root:x:0:0::/root:/bin/sh"] + [
        f"{u}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin" for u, uid in users.items()
    ]
    (etc / "passwd").write_text("\n".join(lines) + "\n")
    (etc / "group").write_text("root:x:0:\n")
    return tmp_path


def plan(root: Path, *, check: bool) -> Plan:
    return Plan(root=root, check=check, out=lambda _line: None)


def test_the_service_users_uids_are_rendered_and_nft_accepts_them(tmp_path: Path) -> None:
    need_root()  # the step writes root-owned files
    root = make_root(tmp_path, {"strongroom-web": WEB_UID, "strongroom-keyd": KEYD_UID})
    steps.firewall(plan(root, check=False), CHECKOUT, SETTINGS)
    toml = (root / "etc/strongroom/network.toml").read_text()
    assert f"local_only_uids = [{WEB_UID}, {KEYD_UID}]\n" in toml
    rules = (root / NFT).read_text()
    assert f'meta skuid {{ {WEB_UID}, {KEYD_UID} }} oif != "lo" counter reject' in rules
    assert "strongroom-web" not in rules  # never a name: nft would resolve it at load time
    nft = subprocess.run([need_binary("nft"), "-c", "-f", str(root / NFT)], capture_output=True, text=True)
    assert nft.returncode == 0, nft.stderr
    again = plan(root, check=True)
    steps.firewall(again, CHECKOUT, SETTINGS)
    assert again.changes == []


@pytest.mark.parametrize(
    ("users", "refusal"),
    [
        ({"strongroom-web": WEB_UID}, "firewall: user strongroom-keyd does not exist"),
        ({"strongroom-keyd": KEYD_UID}, "firewall: user strongroom-web does not exist"),
        (
            {"strongroom-web": 0, "strongroom-keyd": KEYD_UID},
            "local_only_uids[0]: is not a uid from 1 to 4294967294 (root's 0 is refused)",
        ),
    ],
)
def test_without_its_users_the_step_writes_nothing(
    tmp_path: Path, users: dict[str, int], refusal: str
) -> None:
    root = make_root(tmp_path, users)
    with pytest.raises(InstallError, match=re.escape(refusal)):
        steps.firewall(plan(root, check=False), CHECKOUT, SETTINGS)
    assert not (root / "etc/strongroom").exists()


def test_a_check_before_the_users_exist_reports_drift(tmp_path: Path) -> None:
    root = make_root(tmp_path, {})
    checked = plan(root, check=True)
    steps.firewall(checked, CHECKOUT, SETTINGS)
    assert "/etc/strongroom/firewall/strongroom.nft" in checked.changes
    assert not (root / "etc/strongroom").exists()
