"""The settings' [balancer] (deploy/server/settings.py) and what the install makes of it
(deploy/server/steps.py): a web node behind HAProxy gets the PROXY protocol's Define, the health
agent's unit with this node's address and the balancers, 443 and the agent's port open to the
balancers only; a single server (no [balancer]) gets none of it, and a node whose [balancer] is
removed loses all of it again. Hostile values are refused, each by its key."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.__main__ import listen_address
from deploy.server.plan import Plan
from deploy.server.settings import Balancer, Settings, SettingsError, parse
from tests.support import need_binary, need_root

CHECKOUT = Path(__file__).resolve().parents[3]
EXAMPLE = (CHECKOUT / "deploy/server/server.toml.example").read_text()
BALANCERS = ("192.0.2.2", "192.0.2.3")
LISTEN = "192.0.2.14"
WEB_UID, KEYD_UID = 991, 992


def node(balancer: str) -> str:
    """The example as a web node behind a balancer: no employees or CRM of its own on 443."""
    text = re.sub(r"^employees = .*$", "employees = []", EXAMPLE, count=1, flags=re.M)
    text = re.sub(r"^crm = .*$", "crm = []", text, count=1, flags=re.M)
    return text + "\n[balancer]\n" + balancer


GOOD = f'addresses = ["{BALANCERS[0]}", "{BALANCERS[1]}"]\nlisten = "{LISTEN}"\n'


def settings(balancer: str | None = GOOD) -> Settings:
    return parse(EXAMPLE if balancer is None else node(balancer))


def test_without_balancer_the_server_is_a_single_server() -> None:
    assert settings(None).balancer is None


def test_a_balancer_section_is_read() -> None:
    b = settings().balancer
    assert b == Balancer(BALANCERS, LISTEN, 9707)
    assert b.agent == f"{LISTEN}:9707"
    v6 = settings('addresses = ["2001:db8::2"]\nlisten = "2001:DB8::14"\nagent_port = 9800\n').balancer
    assert v6 == Balancer(("2001:db8::2",), "2001:db8::14", 9800)
    assert v6.agent == "[2001:db8::14]:9800"


@pytest.mark.parametrize(
    ("balancer", "key"),
    [
        ("", "balancer.addresses"),
        (f'listen = "{LISTEN}"\n', "balancer.addresses"),
        (f'addresses = []\nlisten = "{LISTEN}"\n', "balancer.addresses"),
        (f'addresses = "192.0.2.2"\nlisten = "{LISTEN}"\n', "balancer.addresses"),
        (f'addresses = ["192.0.2.2", "192.0.2.2"]\nlisten = "{LISTEN}"\n', "balancer.addresses"),
        (
            f"addresses = {[f'192.0.2.{i}' for i in range(20, 29)]}\nlisten = '{LISTEN}'\n".replace("'", '"'),
            "balancer.addresses",
        ),
        # A network, a name, a port, an injection into systemd's or nft's syntax: one address each.
        (f'addresses = ["192.0.2.0/24"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["lb.example.internal"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["192.0.2.2:443"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["192.0.2.2 any"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["192.0.2.2\\nIPAddressAllow=any"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["192.0.2.2 }} accept"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = [2]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["0.0.0.0"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["::"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["127.0.0.1"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["224.0.0.1"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["255.255.255.255"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        (f'addresses = ["169.254.1.1"]\nlisten = "{LISTEN}"\n', "balancer.addresses[0]"),
        ('addresses = ["2001:db8::2%eth0"]\nlisten = "2001:db8::14"\n', "balancer.addresses[0]"),
        ('addresses = ["::ffff:192.0.2.2"]\nlisten = "2001:db8::14"\n', "balancer.addresses[0]"),
        # listen: this node's one address, of the balancers' IP version, never all of them (0.0.0.0).
        ('addresses = ["192.0.2.2"]\n', "balancer.listen"),
        ('addresses = ["192.0.2.2"]\nlisten = "0.0.0.0"\n', "balancer.listen"),
        ('addresses = ["192.0.2.2"]\nlisten = "192.0.2.2"\n', "balancer.listen"),
        ('addresses = ["192.0.2.2"]\nlisten = "vault.example.internal"\n', "balancer.listen"),
        ('addresses = ["192.0.2.2"]\nlisten = ["192.0.2.14"]\n', "balancer.listen"),
        ('addresses = ["2001:db8::2"]\nlisten = "192.0.2.14"\n', "balancer.addresses"),
        # agent_port: unprivileged (the agent has no capability), a real port, an integer.
        (GOOD + "agent_port = 443\n", "balancer.agent_port"),
        (GOOD + "agent_port = 70000\n", "balancer.agent_port"),
        (GOOD + "agent_port = true\n", "balancer.agent_port"),
        (GOOD + 'agent_port = "9707"\n', "balancer.agent_port"),
        (GOOD + "database_grace = 0\n", "balancer.database_grace"),
    ],
)
def test_a_bad_balancer_value_is_refused_by_its_key(balancer: str, key: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings(balancer)
    assert any(p.startswith(f"{key}: ") for p in err.value.problems), err.value.problems
    assert "IPAddressAllow" not in str(err.value)


def test_balancer_must_be_a_table() -> None:
    with pytest.raises(SettingsError) as err:
        parse('balancer = "192.0.2.2"\n' + EXAMPLE)
    assert any(p.startswith("balancer: ") for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("key", ["employees", "crm"])
def test_behind_a_balancer_nobody_else_is_listed_for_443(key: str) -> None:
    """Apache then refuses any connection without the balancer's PROXY header: a network listed
    for 443 would be ignored, so it is refused instead."""
    text = EXAMPLE.replace("[network]", "[network]", 1) + "\n[balancer]\n" + GOOD
    other = "crm" if key == "employees" else "employees"
    text = re.sub(rf"^{other} = .*$", f"{other} = []", text, count=1, flags=re.M)
    with pytest.raises(SettingsError) as err:
        parse(text)
    assert [p.split(":")[0] for p in err.value.problems] == [f"network.{key}"]


# ---- what the install writes --------------------------------------------------------------------


def make_root(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\n"
        f"strongroom-web:x:{WEB_UID}:{WEB_UID}::/nonexistent:/usr/sbin/nologin\n"
        f"strongroom-keyd:x:{KEYD_UID}:{KEYD_UID}::/nonexistent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nstrongroom-web:x:{WEB_UID}:\nstrongroom-keyd:x:{KEYD_UID}:\n")
    (etc / "apache2/conf-enabled").mkdir(parents=True)  # Debian's apache2, as the install finds it
    return tmp_path


def install(root: Path, s: Settings, *, check: bool = False) -> Plan:
    """The [balancer]-dependent steps, in the install's order."""
    plan = Plan(root=root, check=check, out=lambda _line: None)
    steps.behind_balancer(plan, s)
    steps.health_agent(plan, CHECKOUT, s)
    return plan


BALANCER_FILES = (
    "etc/apache2/conf-available/strongroom-balancer.conf",
    "etc/apache2/conf-enabled/strongroom-balancer.conf",
    "etc/systemd/system/strongroom-health-agent.service",
)


def test_a_node_behind_a_balancer_gets_the_define_and_the_agent(tmp_path: Path) -> None:
    need_root()  # the steps write root-owned files
    root = make_root(tmp_path)
    plan = install(root, settings())
    conf = root / BALANCER_FILES[0]
    assert re.findall(r"^Define .*$", conf.read_text(), re.M) == ["Define STRONGROOM_BEHIND_BALANCER"]
    # Enabled as a2enconf does it, next to the installer's strongroom-defines.conf.
    link = root / BALANCER_FILES[1]
    assert link.is_symlink()
    assert str(link.readlink()) == "../conf-available/strongroom-balancer.conf"
    unit = (root / BALANCER_FILES[2]).read_text()
    assert re.findall(r"@[A-Z_]+@", re.sub(r"(?m)^#.*\n", "", unit)) == []  # every placeholder filled
    assert "\nIPAddressAllow=192.0.2.2 192.0.2.3\n" in unit
    assert f"\nExecStart=/opt/strongroom/.venv/bin/flask --app webapp health --agent {LISTEN}:9707\n" in unit
    assert {"apache2", "strongroom-health-agent"} <= plan.restart
    # A second run finds nothing to do.
    again = install(root, settings(), check=True)
    assert again.changes == []


def test_a_single_server_gets_none_of_it(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    plan = install(root, settings(None))
    assert plan.changes == []
    assert plan.restart == set()
    assert [f for f in BALANCER_FILES if (root / f).exists() or (root / f).is_symlink()] == []


def test_removing_balancer_takes_it_all_away(tmp_path: Path) -> None:
    need_root()
    root = make_root(tmp_path)
    install(root, settings())
    checked = install(root, settings(None), check=True)
    assert sorted(checked.changes) == sorted(f"/{f} removed" for f in BALANCER_FILES)
    install(root, settings(None))
    assert [f for f in BALANCER_FILES if (root / f).exists() or (root / f).is_symlink()] == []


def test_the_running_services_include_the_agent_only_behind_a_balancer() -> None:
    # services() starts what it lists: the agent right after the web app, only with [balancer].
    assert steps.AGENT not in steps.SERVICES
    assert steps.AGENT in steps.APP_SERVICES  # restarted with new code, a new venv, new webapp.env


# ---- the firewall --------------------------------------------------------------------------------

NFT = "etc/strongroom/firewall/strongroom.nft"


def test_the_firewall_admits_only_the_balancers(tmp_path: Path) -> None:
    need_root()
    root = make_root(tmp_path)
    steps.firewall(Plan(root=root, check=False, out=lambda _line: None), CHECKOUT, settings())
    toml = (root / "etc/strongroom/network.toml").read_text()
    assert 'employees = ["192.0.2.2", "192.0.2.3"]\n' in toml
    assert "crm = []\n" in toml
    assert f"\n[connection_limits]\nemployees = {steps.BALANCER_CONNECTION_LIMIT}\n" in toml
    rules = (root / NFT).read_text()
    assert "ip saddr { 192.0.2.2/32, 192.0.2.3/32 } tcp dport 443 ct state new add @employees_v4" in rules
    assert "198.51.100.0/24" not in rules  # the example's employees, refused by the settings anyway
    assert (
        "add rule inet strongroom input ip saddr { 192.0.2.2, 192.0.2.3 } ip daddr 192.0.2.14 "
        "tcp dport 9707 ct state new accept\n"
    ) in rules
    assert (
        "insert rule inet strongroom output ip saddr 192.0.2.14 ip daddr { 192.0.2.2, 192.0.2.3 } "
        "tcp sport 9707 ct state established accept\n"
    ) in rules
    nft = subprocess.run([need_binary("nft"), "-c", "-f", str(root / NFT)], capture_output=True, text=True)
    assert nft.returncode == 0, nft.stderr


def test_a_single_servers_firewall_is_as_before(tmp_path: Path) -> None:
    need_root()
    root = make_root(tmp_path)
    steps.firewall(Plan(root=root, check=False, out=lambda _line: None), CHECKOUT, settings(None))
    toml = (root / "etc/strongroom/network.toml").read_text()
    assert toml == (
        "# Written by deploy/strongroom-install from the settings' [network]\n"
        "# (hardening/firewall/config.py).\n"
        'admins = ["192.0.2.10/32", "2001:db8::10/128"]\n'
        'employees = ["198.51.100.0/24", "2001:db8:100::/64"]\n'
        'crm = ["203.0.113.7/32", "2001:db8:200::7/128"]\n'
        f"local_only_uids = [{WEB_UID}, {KEYD_UID}]\n"
    )
    rules = (root / NFT).read_text()
    assert "9707" not in rules
    assert "add rule" not in rules
    assert "insert rule" not in rules


def test_agent_rules_refuse_a_renderer_of_another_shape() -> None:
    with pytest.raises(steps.InstallError, match="chain output"):
        steps.agent_rules("table inet strongroom {\n\tchain input {\n\t}\n}\n", Balancer(BALANCERS, LISTEN))


# ---- the install's check of the listen address -----------------------------------------------------


def test_listen_must_be_an_address_of_this_host() -> None:
    s = settings()
    problems = listen_address(s)  # 192.0.2.14 is on no interface of a test host
    assert problems == [f"balancer.listen: {LISTEN} is not an address of this host (ip -brief address)"]
    assert listen_address(settings(None)) == []
    local = Settings(**{**s.__dict__, "balancer": Balancer(BALANCERS, "127.0.0.1")})
    assert listen_address(local) == []


def test_the_examples_balancer_section_parses_once_uncommented() -> None:
    # Up to the blank line: the example's next optional table follows it.
    block = EXAMPLE.split("# [balancer]\n", 1)[1].split("\n\n", 1)[0]
    body = "".join(line.removeprefix("# ") + "\n" for line in block.splitlines() if line.startswith("# "))
    assert settings(body).balancer == Balancer(BALANCERS, LISTEN, 9707)
