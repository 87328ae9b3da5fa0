"""webapp.env's STRONGROOM_REVEAL_BUDGETS, written by the install from keyd's [budgets]
(deploy/server/steps.py): the web app's global reveal budget and this node's keyd ceiling are the
same six numbers whatever keyd.toml says (defaults, some windows, all of them), keyd's own loader
agrees with the installer's reading, the web app's own loader takes the line, and a keyd.toml that
keyd would refuse stops the install with the old webapp.env in place (docs/scaling.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.plan import InstallError, Plan
from deploy.server.settings import SettingsError, parse
from keyd import config as keyd_config
from keyd.config import load as load_keyd_config
from tests.support import need_root
from webapp.budgets import MAX_REVEAL_LIMIT, parse_reveal_limits

CHECKOUT = Path(__file__).resolve().parents[3]
SETTINGS = parse((CHECKOUT / "deploy/server/server.toml.example").read_text())
WEB_UID = 991
TEMPLATE = (CHECKOUT / "deploy/keyd.toml.in").read_text().replace("@WEB_UID@", str(WEB_UID))

KEYD_FILES = {
    "the shipped file (keyd's defaults)": TEMPLATE,
    "one window": TEMPLATE + "\n[budgets.employee]\nminute = 2\n",
    "all six": TEMPLATE
    + "\n[budgets.employee]\nminute = 5\nhour = 50\nday = 500\n"
    + "[budgets.global]\nminute = 60\nhour = 600\nday = 6000\n",
    "the global scope only": TEMPLATE + "\n[budgets.global]\nday = 1000000000\n",
    "inline tables": TEMPLATE + "\nbudgets = { employee = { hour = 10 }, global = {} }\n",
}


def make_root(tmp_path: Path, keyd_toml: str | None) -> Path:
    etc = tmp_path / "etc"
    (etc / "strongroom").mkdir(parents=True)
    (etc / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\nstrongroom-web:x:{WEB_UID}:{WEB_UID}::/:/x\n")
    (etc / "group").write_text(f"root:x:0:\nstrongroom-web:x:{WEB_UID}:\n")
    if keyd_toml is not None:
        (etc / "strongroom/keyd.toml").write_text(keyd_toml)
    return tmp_path


def written_budgets(root: Path) -> dict[str, dict[str, int]]:
    """The value as systemd's EnvironmentFile= hands it to the web app: single quotes taken literally."""
    lines = (root / "etc/strongroom/webapp.env").read_text().splitlines()
    found = [line.split("=", 1)[1] for line in lines if line.startswith("STRONGROOM_REVEAL_BUDGETS=")]
    assert len(found) == 1, found
    value = found[0]
    assert value.startswith("'")
    assert value.endswith("'")
    assert "'" not in value[1:-1]
    assert "\\" not in value
    budgets: dict[str, dict[str, int]] = json.loads(value[1:-1])
    return budgets


def keyds_own(path: Path) -> dict[str, dict[str, int]]:
    limits = load_keyd_config(path).budgets
    return {"employee": dict(limits.employee), "global": dict(limits.overall)}


@pytest.mark.parametrize("keyd_toml", KEYD_FILES.values(), ids=KEYD_FILES.keys())
def test_webapp_env_carries_keyds_six_numbers(tmp_path: Path, keyd_toml: str) -> None:
    need_root()  # the step writes root-owned files
    root = make_root(tmp_path, keyd_toml)
    steps.webapp_env(Plan(root=root, check=False, out=lambda _line: None), CHECKOUT, SETTINGS)
    written = written_budgets(root)
    assert written == keyds_own(root / "etc/strongroom/keyd.toml")
    assert {scope: set(windows) for scope, windows in written.items()} == {
        "employee": {"minute", "hour", "day"},
        "global": {"minute", "hour", "day"},
    }
    # The web app's parser takes it (all six required there).
    assert len(parse_reveal_limits(written)) == 6


def test_before_keyd_toml_exists_the_template_stands_in(tmp_path: Path) -> None:
    """A --check on a bare server (install.sh has not written keyd.toml yet): keyd's defaults."""
    root = make_root(tmp_path, None)
    plan = Plan(root=root, check=True, out=lambda _line: None)
    value = steps.reveal_budgets(plan, CHECKOUT)
    defaults = keyd_config.Config().budgets
    assert json.loads(value[1:-1]) == {"employee": defaults.employee, "global": defaults.overall}


def test_the_web_apps_loader_takes_the_written_line() -> None:
    """create_app in a subprocess with the value as systemd would pass it (the install's own check)."""
    root_value = steps.reveal_budgets(Plan(root=Path("/nonexistent"), check=True), CHECKOUT)
    assert steps.webapp_refuses(sys.executable, CHECKOUT, (("REVEAL_BUDGETS", root_value),)) == ""
    # ...and the check is not vacuous: a window missing is refused by the web app.
    bad = "'" + json.dumps({"employee": {"minute": 1}, "global": {"minute": 1}}) + "'"
    assert steps.webapp_refuses(sys.executable, CHECKOUT, (("REVEAL_BUDGETS", bad),)) != ""


def test_the_installer_reads_the_rules_and_defaults_keyd_reads() -> None:
    assert steps.MAX_KEYD_BUDGET == keyd_config.MAX_BUDGET == MAX_REVEAL_LIMIT
    assert steps.keyd_default_budgets(CHECKOUT) == {
        "employee": keyd_config.DEFAULT_EMPLOYEE_BUDGET,
        "global": keyd_config.DEFAULT_GLOBAL_BUDGET,
    }


HOSTILE = {
    "not TOML": "budgets = [",
    "an unknown scope": "[budgets.team]\nminute = 1\n",
    "an unknown window": "[budgets.employee]\nweek = 1\n",
    "zero": "[budgets.employee]\nminute = 0\n",
    "too large": "[budgets.global]\nday = 1000000001\n",
    "a boolean": "[budgets.employee]\nminute = true\n",
    "a string": '[budgets.employee]\nminute = "30"\n',
    "a float": "[budgets.employee]\nminute = 1.5\n",
    "not a table": 'budgets = "none"\n',
}


@pytest.mark.parametrize("extra", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_keyd_toml_keyd_refuses_stops_the_install(tmp_path: Path, extra: str) -> None:
    root = make_root(tmp_path, TEMPLATE + "\n" + extra)
    with pytest.raises(keyd_config.ConfigError):
        load_keyd_config(root / "etc/strongroom/keyd.toml")  # keyd itself would not start
    (root / "etc/strongroom/webapp.env").write_text("OLD\n")
    with pytest.raises(InstallError) as err:
        steps.webapp_env(Plan(root=root, check=False, out=lambda _line: None), CHECKOUT, SETTINGS)
    assert str(err.value).startswith("/etc/strongroom/keyd.toml")
    assert "1000000001" not in str(err.value)
    assert (root / "etc/strongroom/webapp.env").read_text() == "OLD\n"


def test_a_changed_budget_tells_the_admin_to_restart_keyd(tmp_path: Path) -> None:
    need_root()
    root = make_root(tmp_path, TEMPLATE)
    steps.webapp_env(Plan(root=root, check=False, out=lambda _line: None), CHECKOUT, SETTINGS)
    same = Plan(root=root, check=True, out=lambda _line: None)
    steps.webapp_env(same, CHECKOUT, SETTINGS)
    assert same.changes == []
    assert steps.KEYD not in same.restart
    (root / "etc/strongroom/keyd.toml").write_text(TEMPLATE + "\n[budgets.employee]\nday = 400\n")
    changed = Plan(root=root, check=True, out=lambda _line: None)
    steps.webapp_env(changed, CHECKOUT, SETTINGS)
    assert changed.changes == ["/etc/strongroom/webapp.env"]
    # keyd reads [budgets] at start only: the services step then says it runs older settings.
    assert steps.KEYD in changed.restart


def test_webapp_cannot_set_them_apart() -> None:
    text = (CHECKOUT / "deploy/server/server.toml.example").read_text()
    with pytest.raises(SettingsError) as err:
        parse(text + "\n[webapp]\nREVEAL_BUDGETS = '{\"employee\": {}}'\n")
    assert [p.split(":")[0] for p in err.value.problems] == ["webapp.REVEAL_BUDGETS"]


def test_the_shipped_keyd_toml_shows_the_defaults_it_leaves_in_force() -> None:
    shown = [line.removeprefix("#   ") for line in TEMPLATE.splitlines() if line.startswith("#   ")]
    documented = steps.keyd_budgets("\n".join(shown), {"employee": {}, "global": {}})
    assert documented == steps.keyd_budgets(TEMPLATE, steps.keyd_default_budgets(CHECKOUT))
