"""Strict parsing of the address file: each hostile or mistaken input gets its own precise refusal."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from hardening.firewall import (
    ConnectionLimits,
    FirewallConfigError,
    Variant,
    load_config,
    parse_config,
    render_iptables,
    render_nft,
)
from tests.support import need_binary

REPO = Path(__file__).resolve().parents[2]
KEY_A = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="  # 32 bytes of "a": shape only, not a real key
KEY_B = "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI="
GOOD = """
admins = ["192.0.2.10", "2001:db8::10"]
employees = ["198.51.100.0/24", "2001:db8:100::/64"]
crm = ["203.0.113.7"]
"""
VPN = f"""
[vpn]
interface = "wg0"
address = "10.77.0.1/24"
address6 = "fd77::1/64"
listen_port = 51820
[[vpn.peers]]
name = "alice"
public_key = "{KEY_A}"
address = "10.77.0.10"
address6 = "fd77::10"
"""


def test_a_good_file_parses_into_networks() -> None:
    config = parse_config(GOOD + VPN)
    assert config.admins == (ipaddress.ip_network("192.0.2.10/32"), ipaddress.ip_network("2001:db8::10/128"))
    assert [str(n) for n in config.https_clients] == [
        "198.51.100.0/24",
        "2001:db8:100::/64",
        "203.0.113.7/32",
    ]
    assert config.vpn is not None
    assert config.vpn.interface == "wg0"
    assert str(config.vpn.address.ip) == "10.77.0.1"
    assert [p.name for p in config.vpn.peers] == ["alice"]


def test_employees_and_crm_may_be_empty_and_vpn_is_optional() -> None:
    config = parse_config('admins = ["192.0.2.10"]\nemployees = []\ncrm = []\n')
    assert config.https_clients == ()
    assert config.vpn is None


def test_local_only_uids_are_optional_numbers() -> None:
    assert parse_config(GOOD).local_only_uids == ()
    assert parse_config(GOOD + "local_only_uids = [998, 65534]\n" + VPN).local_only_uids == (998, 65534)


def test_connection_limits_default_and_override_per_list() -> None:
    assert parse_config(GOOD).limits == ConnectionLimits(admins=10, employees=20, crm=64)
    config = parse_config(GOOD + "[connection_limits]\ncrm = 200\n")
    assert config.limits == ConnectionLimits(admins=10, employees=20, crm=200)
    nft = render_nft(config)
    assert (
        "ip saddr { 192.0.2.10/32 } tcp dport 22 ct state new add @admins_v4 { ip saddr ct count 10 } accept"
        in nft
    )
    assert "add @crm_v4 { ip saddr ct count 200 } accept" in nft
    assert "add @employees_v6 { ip6 saddr ct count 20 } accept" in nft
    # The CRM's rules first: a CRM host inside the employees' network gets the CRM's limit.
    assert nft.index("@crm_v4") < nft.index("@employees_v4")
    v6 = render_iptables(config, family=6)
    assert (
        "-A INPUT -s 2001:db8:100::/64 -p tcp -m tcp --dport 443 -m conntrack --ctstate NEW -m connlimit "
        "--connlimit-above 20 --connlimit-mask 128 --connlimit-saddr -j REJECT --reject-with tcp-reset\n"
        "-A INPUT -s 2001:db8:100::/64 -p tcp -m tcp --dport 443 -j ACCEPT\n"
    ) in v6
    # Over the VPN the peer's list is unknown: the looser limit, so the CRM is never cut off there.
    vpn = parse_config(GOOD + "[connection_limits]\ncrm = 200\n" + VPN)
    assert "add @vpn_v6 { ip6 saddr ct count 200 } accept" in render_nft(vpn, Variant.VPN)
    assert "--connlimit-above 200 --connlimit-mask 32" in render_iptables(vpn, Variant.VPN, family=4)


def test_the_local_only_rule_changes_nothing_but_output() -> None:
    plain, local = parse_config(GOOD + VPN), parse_config(GOOD + "local_only_uids = [998, 997]\n" + VPN)
    for variant in Variant:
        nft = render_nft(local, variant)
        rule = '\t\tmeta skuid { 998, 997 } oif != "lo" counter reject with icmpx type admin-prohibited\n'
        assert rule in nft
        assert nft.replace(rule, "") == render_nft(plain, variant)
        for family, reject in ((4, "icmp-admin-prohibited"), (6, "icmp6-adm-prohibited")):
            rules = [
                f"-A OUTPUT -m owner --uid-owner {uid} ! -o lo -j REJECT --reject-with {reject}\n"
                for uid in (998, 997)
            ]
            text = render_iptables(local, variant, family=family)
            assert "".join(rules) in text
            assert text.replace("".join(rules), "") == render_iptables(plain, variant, family=family)


BASE = 'admins = ["192.0.2.10"]\nemployees = []\ncrm = []\n'


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("admins = [", "not valid TOML"),
        ('admins = ["192.0.2.10"]\nemployees = []\n', "crm: is required: write crm = [] if there are none"),
        ("admins = []\nemployees = []\ncrm = []\n", "admins: at least one address is required"),
        ('admins = "192.0.2.10"\nemployees = []\ncrm = []\n', "admins: must be a list"),
        ('admins = ["192.0.2.10"]\nemployees = []\ncrm = []\nadmin = []\n', "admin: is not a known setting"),
        (
            'admins = ["192.0.2.300"]\nemployees = []\ncrm = []\n',
            "admins[0]: is not an IP address or network",
        ),
        (
            'admins = ["192.0.2.10"]\nemployees = ["example.com"]\ncrm = []\n',
            "employees[0]: is not an IP address or network",
        ),
        ('admins = ["192.0.2.10"]\nemployees = [42]\ncrm = []\n', "employees[0]: must be a string, not int"),
        ('admins = ["192.0.2.10/24"]\nemployees = []\ncrm = []\n', "has host bits set"),
        ('admins = ["0.0.0.0/0"]\nemployees = []\ncrm = []\n', "too broad"),
        ('admins = ["192.0.2.10"]\nemployees = ["::/0"]\ncrm = []\n', "too broad"),
        ('admins = ["192.0.2.10"]\nemployees = ["2001::/16"]\ncrm = []\n', "too broad"),
        ('admins = ["127.0.0.1"]\nemployees = []\ncrm = []\n', "not a routable host"),
        ('admins = ["fe80::1"]\nemployees = []\ncrm = []\n', "not a routable host"),
        ('admins = ["fe80::1%eth0"]\nemployees = []\ncrm = []\n', "is not an IPv4 or IPv6 address"),
        ('admins = ["224.0.0.1"]\nemployees = []\ncrm = []\n', "not a routable host"),
        ('admins = [" 192.0.2.10"]\nemployees = []\ncrm = []\n', "is not an IPv4 or IPv6 address"),
        (
            'admins = ["192.0.2.10", "192.0.2.10/32"]\nemployees = []\ncrm = []\n',
            "admins: [1] is listed twice",
        ),
        (
            "admins = ["
            + ", ".join(f'"10.0.{i // 250}.{i % 250 + 1}"' for i in range(257))
            + "]\nemployees = []\ncrm = []\n",
            "admins: must have at most 256 entries",
        ),
        (GOOD + "[vpn]\ninterface = 'wg0'\naddress = '10.77.0.1/24'\n", "vpn.listen_port: is required"),
        (
            GOOD + VPN.replace('"wg0"', '"wg0; drop"'),
            "vpn.interface: is not a valid interface name",
        ),
        (GOOD + VPN.replace('"wg0"', '"averyveryverylongname"'), "not a valid interface name"),
        (GOOD + VPN.replace("10.77.0.1/24", "10.77.0.1"), "must be an IPv4 address with its prefix"),
        (GOOD + VPN.replace("10.77.0.1/24", "10.77.0.0/24"), "the network's own or broadcast address"),
        (
            GOOD + VPN.replace("10.77.0.1/24", "fd77::2/64"),
            "vpn.address: is not an IPv4 address",
        ),
        (GOOD + VPN.replace("51820", "70000"), "vpn.listen_port: must be at most 65535"),
        (GOOD + VPN.replace("51820", "true"), "vpn.listen_port: must be a whole number"),
        (GOOD + VPN.replace('"alice"', '"Alice Smith"'), "vpn.peers[0].name"),
        (GOOD + VPN.replace(KEY_A, "not-a-key"), "vpn.peers[0].public_key: not a WireGuard public key"),
        (GOOD + VPN.replace(KEY_A, KEY_A[:-2] + "!="), "bad base64"),
        (
            GOOD + VPN.replace('"10.77.0.10"', '"10.78.0.10"'),
            "is not a host address inside the VPN's 10.77.0.0/24",
        ),
        (GOOD + VPN.replace('"10.77.0.10"', '"10.77.0.1"'), "vpn: peers[0].address is already taken"),
        (
            GOOD + VPN.replace('"fd77::10"', '"fd78::10"'),
            "vpn: peers[0].address6 is not a host address inside the VPN's fd77::/64",
        ),
        (
            GOOD + VPN + VPN.split("[[vpn.peers]]")[1].join(["[[vpn.peers]]", ""]),
            "vpn: peers[1].name is listed twice",
        ),
        (
            GOOD + VPN + "[[vpn.peers]]" + VPN.split("[[vpn.peers]]")[1].replace("alice", "bob"),
            "the same key is used by two peers",
        ),
        (
            GOOD + VPN + f'[[vpn.peers]]\nname = "bob"\npublic_key = "{KEY_B}"\naddress = "10.77.0.10"\n',
            "vpn: peers[1].address is already taken",
        ),
        (GOOD + VPN.replace("name = ", "nmae = "), "vpn.peers[0].nmae: is not a known setting"),
        (BASE + "local_only_uids = 998\n", "local_only_uids: must be a list"),
        (
            BASE + 'local_only_uids = ["strongroom-web"]\n',
            "local_only_uids[0]: is not a numeric uid (names are not accepted)",
        ),
        (
            BASE + 'local_only_uids = ["998"]\n',
            "local_only_uids[0]: is not a numeric uid (names are not accepted)",
        ),
        (
            BASE + "local_only_uids = [true]\n",
            "local_only_uids[0]: is not a numeric uid (names are not accepted)",
        ),
        (
            BASE + "local_only_uids = [998.0]\n",
            "local_only_uids[0]: is not a numeric uid (names are not accepted)",
        ),
        (
            BASE + "local_only_uids = [0]\n",
            "local_only_uids[0]: is not a uid from 1 to 4294967294 (root's 0 is refused)",
        ),
        (
            BASE + "local_only_uids = [-1]\n",
            "local_only_uids[0]: is not a uid from 1 to 4294967294 (root's 0 is refused)",
        ),
        (
            BASE + "local_only_uids = [4294967295]\n",
            "local_only_uids[0]: is not a uid from 1 to 4294967294 (root's 0 is refused)",
        ),
        (BASE + "local_only_uids = [998, 997, 998]\n", "local_only_uids: [2] is listed twice"),
        (
            BASE + f"local_only_uids = [{', '.join(str(1000 + i) for i in range(257))}]\n",
            "local_only_uids: must have at most 256 entries",
        ),
        (BASE + "local_only_uid = [998]\n", "local_only_uid: is not a known setting"),
        (BASE + "connection_limits = 20\n", "connection_limits: must be a table"),
        (BASE + "[connection_limits]\nemployee = 20\n", "connection_limits.employee: is not a known setting"),
        (
            BASE + "[connection_limits]\nemployees = 0\n",
            "connection_limits.employees: must be at least 1",
        ),
        (BASE + "[connection_limits]\ncrm = -1\n", "connection_limits.crm: must be at least 1"),
        (BASE + "[connection_limits]\nadmins = 4097\n", "connection_limits.admins: must be at most 4096"),
        (
            BASE + "[connection_limits]\nadmins = 2147483648\n",
            "connection_limits.admins: must be at most 4096",
        ),
        (
            BASE + "[connection_limits]\nemployees = true\n",
            "connection_limits.employees: must be a whole number",
        ),
        (
            BASE + "[connection_limits]\nemployees = 20.0\n",
            "connection_limits.employees: must be a whole number",
        ),
        (
            BASE + '[connection_limits]\nemployees = "20"\n',
            "connection_limits.employees: must be a whole number",
        ),
        (
            BASE + "[connection_limits]\nemployees = [20]\n",
            "connection_limits.employees: must be a whole number",
        ),
        (
            BASE + "[connection_limits]\nemployees = inf\n",
            "connection_limits.employees: must be a whole number",
        ),
        (
            BASE + "[connection_limits.employees]\nv4 = 20\n",
            "connection_limits.employees: must be a whole number",
        ),
    ],
)
def test_bad_input_is_refused_with_a_precise_reason(text: str, refusal: str) -> None:
    with pytest.raises(FirewallConfigError) as caught:
        parse_config(text)
    # Each problem is a line of its own that names the place and the rule, never the value.
    lines = str(caught.value).splitlines()
    assert any(refusal in line for line in lines), lines


def test_an_oversized_or_binary_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 70_000 + "\n" + GOOD)
    with pytest.raises(FirewallConfigError, match="larger than 65536 bytes"):
        load_config(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"admins = [\xff]")
    with pytest.raises(FirewallConfigError, match="not UTF-8"):
        load_config(binary)
    with pytest.raises(FirewallConfigError, match=r"missing\.toml: does not exist"):
        load_config(tmp_path / "missing.toml")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hardening.firewall", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_render_writes_three_files_that_the_tools_accept(tmp_path: Path) -> None:
    config = tmp_path / "network.toml"
    # Default connection limits on every list (v4 and v6) and over the VPN: nft must accept them.
    config.write_text(
        GOOD.replace('"203.0.113.7"', '"203.0.113.7", "2001:db8:200::7"') + "local_only_uids = [998]\n" + VPN
    )
    for variant in ("plain", "vpn"):
        out = tmp_path / variant
        result = cli("render", str(config), "--out", str(out), "--variant", variant)
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in out.iterdir()) == ["rules.v4", "rules.v6", "strongroom.nft"]
        # Check mode only: nft -c never touches the running ruleset (real loads: test_firewall_netns).
        nft = subprocess.run(
            [need_binary("nft"), "-c", "-f", str(out / "strongroom.nft")], capture_output=True, text=True
        )
        assert nft.returncode == 0, nft.stderr


def test_render_refuses_a_bad_file_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "network.toml"
    config.write_text(GOOD.replace("203.0.113.7", "203.0.113.700"))
    result = cli("render", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert f"{config}: crm[0]: is not an IP address or network\n" in result.stderr
    assert "203.0.113.700" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_vpn_variant_needs_a_vpn_section(tmp_path: Path) -> None:
    config = tmp_path / "network.toml"
    config.write_text(GOOD)
    result = cli("render", str(config), "--out", str(tmp_path / "out"), "--variant", "vpn")
    assert result.returncode == 1
    assert "needs a [vpn] section" in result.stderr


def test_check_summarises_the_file(tmp_path: Path) -> None:
    config = tmp_path / "network.toml"
    config.write_text(GOOD + "local_only_uids = [998]\n" + VPN)
    result = cli("check", str(config))
    assert result.returncode == 0, result.stderr
    assert "admins (tcp 22): 192.0.2.10/32, 2001:db8::10/128" in result.stdout
    assert "loopback-only senders (uids): 998" in result.stdout
    assert "vpn: wg0 10.77.0.1/24, 1 peer(s)" in result.stdout
