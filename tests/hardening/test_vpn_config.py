"""The generated WireGuard configs: accepted by the WireGuard tools, no private key inside, hostile input
refused. (The tunnels themselves run in test_vpn_netns.)"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from hardening.firewall import FirewallConfigError, parse_config
from hardening.vpn import render_client, render_server
from tests.hardening.conftest import Lan, keypair
from tests.support import need_binary

REPO = Path(__file__).resolve().parents[2]


def addresses(public_key: str) -> str:
    return f"""
admins = ["192.0.2.10"]
employees = ["198.51.100.0/24"]
crm = []
[vpn]
interface = "wg0"
address = "10.77.0.1/24"
address6 = "fd77::1/64"
listen_port = 51820
[[vpn.peers]]
name = "alice"
public_key = "{public_key}"
address = "10.77.0.10"
"""


def test_the_server_config_has_no_private_key_and_wg_quick_strips_it(tmp_path: Path) -> None:
    _, public = keypair()
    text = render_server(parse_config(addresses(public)))
    assert "PrivateKey" not in text
    assert "PostUp = wg set %i private-key /etc/wireguard/wg0.key" in text
    conf = tmp_path / "wg0.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    stripped = subprocess.run(
        [need_binary("wg-quick"), "strip", str(conf)], capture_output=True, text=True, check=False
    )
    assert stripped.returncode == 0, stripped.stderr
    # What is left is what `wg` itself reads: the wg-quick-only keys are gone.
    assert "Address" not in stripped.stdout
    assert "PostUp" not in stripped.stdout
    assert f"PublicKey = {public}" in stripped.stdout
    assert "AllowedIPs = 10.77.0.10/32" in stripped.stdout


def test_wg_setconf_accepts_the_stripped_config(tmp_path: Path) -> None:
    # `wg` parses a config only into a live interface: wg-quick brings one up in a throwaway namespace.
    _, public = keypair()
    private, _ = keypair()
    name = f"wgk{secrets.token_hex(3)}"  # unique: wireguard-go's control sockets are shared by all namespaces
    text = render_server(parse_config(addresses(public).replace('"wg0"', f'"{name}"')))
    with Lan(["server"]) as lan:
        wireguard = lan.etc("server") / "wireguard"
        wireguard.mkdir(mode=0o700)
        (wireguard / f"{name}.conf").write_text(text)
        (wireguard / f"{name}.key").write_text(private + "\n")
        lan["server"].run(need_binary("wg-quick"), "up", name)
        try:
            shown = lan["server"].run(need_binary("wg"), "showconf", name).stdout
            addrs = lan["server"].run("ip", "-brief", "addr", "show", "dev", name).stdout
        finally:
            lan["server"].run(need_binary("wg-quick"), "down", name, check=False)
    assert "ListenPort = 51820" in shown
    assert f"PublicKey = {public}" in shown
    assert "10.77.0.1/24" in addrs
    assert "fd77::1/64" in addrs


def test_a_client_config_targets_only_the_servers_vpn_address() -> None:
    _, public = keypair()
    _, server_public = keypair()
    text = render_client(
        parse_config(addresses(public)),
        "alice",
        server_public_key=server_public,
        endpoint="vault.example:51820",
    )
    assert "AllowedIPs = 10.77.0.1/32, fd77::1/128" in text  # split tunnel: only the vault goes through it
    assert "Address = 10.77.0.10/32" in text
    assert f"PublicKey = {server_public}" in text


@pytest.mark.parametrize(
    ("name", "server_key", "endpoint", "refusal"),
    [
        ("bob", None, "vault.example:51820", "no peer named 'bob'"),
        ("alice", "not-a-key", "vault.example:51820", "server public key: not a WireGuard public key"),
        ("alice", None, "vault.example", "must be host:port"),
        ("alice", None, "vault.example:0", "must be host:port"),
        ("alice", None, "vault.example:99999", "must be host:port"),
        ("alice", None, "vault.example:51820\nPostUp = rm -rf /", "must be host:port"),
        ("alice", None, "x\n[Peer]:51820", "must be host:port"),
        ("alice", None, ":51820", "must be host:port"),
    ],
)
def test_bad_client_input_is_refused(name: str, server_key: str | None, endpoint: str, refusal: str) -> None:
    _, public = keypair()
    with pytest.raises(FirewallConfigError) as caught:
        render_client(
            parse_config(addresses(public)), name, server_public_key=server_key or public, endpoint=endpoint
        )
    assert refusal in str(caught.value)


def test_without_a_vpn_section_nothing_is_rendered() -> None:
    config = parse_config('admins = ["192.0.2.10"]\nemployees = []\ncrm = []\n')
    with pytest.raises(FirewallConfigError, match=r"no \[vpn\] section"):
        render_server(config)


def test_the_cli_writes_a_root_only_file(tmp_path: Path) -> None:
    _, public = keypair()
    source = tmp_path / "network.toml"
    source.write_text(addresses(public))
    out = tmp_path / "wg0.conf"
    result = subprocess.run(
        [sys.executable, "-m", "hardening.vpn", "server", str(source), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_text() == render_server(parse_config(addresses(public)))
