"""The VPN variant for real: WireGuard tunnels built from the generated configs with `wg-quick up`, and the
firewall that accepts 443 only when it arrives through the tunnel.

This kernel has no WireGuard module, so wg-quick falls back to wireguard-go (the same configs, the same
`wg` tools, a userspace data path); on a host with the module the very same commands use the kernel.
Interface names carry a random suffix: wireguard-go's control sockets live in /var/run/wireguard, which
namespaces do not separate.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardening.firewall import Variant, parse_config
from hardening.vpn import render_client, render_server
from hardening.vpn.render import CLIENT_KEY_PLACEHOLDER
from tests.hardening.conftest import LAN_V4, LAN_V6, Lan, keypair, load_firewall, probe_result, write_rules
from tests.support import need_binary

LISTEN_PORT = 51820
SERVER_VPN = ("10.77.0.1", "fd77::1")
PORTS = (22, 443, 8080)


@dataclass
class Vpn:
    lan: Lan
    addresses: str  # the address file the rules and the configs were generated from


def address_file(interface: str, employee_key: str, mallory_key: str) -> str:
    return f"""
admins = ["{LAN_V4.format(10)}", "{LAN_V6.format(10)}"]
employees = ["192.0.2.16/29", "2001:db8::20/126"]
crm = ["{LAN_V4.format(30)}", "{LAN_V6.format(30)}"]

[vpn]
interface = "{interface}"
address = "{SERVER_VPN[0]}/24"
address6 = "{SERVER_VPN[1]}/64"
listen_port = {LISTEN_PORT}

[[vpn.peers]]
name = "employee"
public_key = "{employee_key}"
address = "10.77.0.10"
address6 = "fd77::10"

[[vpn.peers]]
name = "mallory"          # a valid key, stolen and used from an address that is not an employee's
public_key = "{mallory_key}"
address = "10.77.0.66"
address6 = "fd77::66"
"""


def wg_quick(lan: Lan, role: str, interface: str, config: str, key: str | None = None) -> None:
    wireguard = lan.etc(role) / "wireguard"
    wireguard.mkdir(mode=0o700, exist_ok=True)
    (wireguard / f"{interface}.conf").write_text(config)
    (wireguard / f"{interface}.conf").chmod(0o600)
    if key is not None:
        (wireguard / f"{interface}.key").write_text(key + "\n")
        (wireguard / f"{interface}.key").chmod(0o600)
    lan[role].run(need_binary("wg-quick"), "up", interface)


@pytest.fixture(scope="module")
def vpn() -> Iterator[Vpn]:
    for tool in ("wg", "wg-quick", "wireguard-go"):
        need_binary(tool)
    if not Path("/etc/wireguard").is_dir():
        pytest.fail("/etc/wireguard is missing: wireguard-tools is not installed properly")
    suffix = secrets.token_hex(2)
    server_if = f"wgs{suffix}"
    server_key, server_pub = keypair()
    employee_key, employee_pub = keypair()
    mallory_key, mallory_pub = keypair()
    addresses = address_file(server_if, employee_pub, mallory_pub)
    config = parse_config(addresses)
    with Lan() as lan:
        interfaces: list[tuple[str, str]] = []
        try:
            lan["server"].listen("22", "443", "8080")
            wg_quick(lan, "server", server_if, render_server(config), key=server_key)
            interfaces.append(("server", server_if))
            endpoint = f"{lan['server'].v4}:{LISTEN_PORT}"
            clients = (
                ("employee", "employee", employee_key, "e"),
                ("untrusted", "mallory", mallory_key, "m"),
            )
            for role, name, key, letter in clients:
                client = render_client(config, name, server_public_key=server_pub, endpoint=endpoint)
                client = client.replace(CLIENT_KEY_PLACEHOLDER, key)
                client_if = f"wg{letter}{suffix}"  # one name per host: the control sockets are shared
                wg_quick(lan, role, client_if, client)
                interfaces.append((role, client_if))
            # The CRM host tries the other way in: straight to the VPN address over the wired LAN.
            lan["crm"].run("ip", "route", "add", "10.77.0.0/24", "via", lan["server"].v4)
            lan["crm"].run("ip", "-6", "route", "add", "fd77::/64", "via", lan["server"].v6)
            yield Vpn(lan=lan, addresses=addresses)
        finally:
            for role, interface in interfaces:
                lan[role].run(need_binary("wg-quick"), "down", interface, check=False)


@pytest.fixture(params=["nft", "iptables"])
def firewalled(request: pytest.FixtureRequest, vpn: Vpn, tmp_path: Path) -> Iterator[Lan]:
    load_firewall(vpn.lan["server"], request.param, write_rules(tmp_path, vpn.addresses, Variant.VPN))
    try:
        yield vpn.lan
    finally:
        vpn.lan["server"].run("nft", "flush", "ruleset")


def outcomes(lan: Lan) -> dict[str, dict[str, dict[str, str]]]:
    server = lan["server"]
    everywhere = [server.v4, server.v6, *SERVER_VPN]
    running = {
        role: lan[role].probe_start(everywhere, PORTS) for role in ("admin", "employee", "crm", "untrusted")
    }
    return {role: probe_result(proc) for role, proc in running.items()}


def table(lan: Lan, allowed: dict[str, dict[str, set[int]]]) -> dict[str, dict[str, dict[str, str]]]:
    server = lan["server"]
    everywhere = [server.v4, server.v6, *SERVER_VPN]
    return {
        role: {
            address: {str(p): "open" if p in allowed[role].get(address, set()) else "timeout" for p in PORTS}
            for address in everywhere
        }
        for role in ("admin", "employee", "crm", "untrusted")
    }


def test_without_a_firewall_both_tunnels_and_the_wired_route_reach_everything(vpn: Vpn) -> None:
    # The baseline: the tunnels work (mallory's too) and the CRM's route to the VPN address works, so
    # every timeout in the next test is the firewall's doing.
    lan = vpn.lan
    lan["server"].run("nft", "flush", "ruleset")
    server = lan["server"]
    lan_addresses = {server.v4: set(PORTS), server.v6: set(PORTS)}
    vpn_addresses = {address: set(PORTS) for address in SERVER_VPN}
    allowed = {
        "admin": lan_addresses,
        "employee": lan_addresses | vpn_addresses,
        "crm": lan_addresses | vpn_addresses,
        "untrusted": lan_addresses | vpn_addresses,
    }
    assert outcomes(lan) == table(lan, allowed)


def test_443_is_reachable_only_through_the_tunnel(firewalled: Lan) -> None:
    server = firewalled["server"]
    allowed = {
        "admin": {server.v4: {22}, server.v6: {22}},  # ssh stays on the wired side, admins only
        "employee": {address: {443} for address in SERVER_VPN},  # through wg: 443 and nothing else
        "crm": {},  # 443 over the LAN is closed, and so is its route straight to the VPN address
        "untrusted": {},  # the stolen key does not help: its handshake never reaches WireGuard
    }
    assert outcomes(firewalled) == table(firewalled, allowed)
