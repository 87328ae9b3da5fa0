"""The generated firewall, loaded for real in a server namespace and probed from each host of a LAN.

The design's "test the firewall settings from an untrusted IP": from the admin, an employee, the CRM and
an untrusted host, over IPv4 and IPv6, exactly the allowed connections open and every other one times out
(a DROP, not a refusal). The same table runs against the nftables file and the iptables-restore files.
The address file lists a local-only uid, so every test here also shows that the output rule changes
nothing on the input side; the last ones show what it does to that user's own connections.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.conftest import LAN_V4, LAN_V6, Lan, load_firewall, probe_result, write_rules

# Uids with no /etc/passwd entry: the rules are numeric, so the user need not exist where they load.
LOCAL_UID, OTHER_UID = 4242, 4243
ADDRESSES = f"""
admins = ["{LAN_V4.format(10)}", "{LAN_V6.format(10)}"]
employees = ["192.0.2.16/29", "2001:db8::20/126"]   # the employee host is .21 / ::21
crm = ["{LAN_V4.format(30)}", "{LAN_V6.format(30)}"]
local_only_uids = [{LOCAL_UID}]
"""
PORTS = (22, 443, 8080)  # 8080 listens too: a port nobody is allowed must time out as well
ALLOWED = {"admin": {22}, "employee": {443}, "crm": {443}, "untrusted": set()}


@pytest.fixture(params=["nft", "iptables"])
def firewalled(request: pytest.FixtureRequest, lan: Lan, tmp_path: Path) -> Iterator[Lan]:
    load_firewall(lan["server"], request.param, write_rules(tmp_path, ADDRESSES))
    try:
        yield lan
    finally:
        lan["server"].run("nft", "flush", "ruleset")


# Connects (tcp) or sends and waits for the echo (udp, "u" prefix) as the given uid (0: stay root), and
# says "open", "timeout" or the errno's name. The interpreter is loaded before the uid is dropped.
AS_USER = r"""
import errno, json, os, socket, sys
uid = int(sys.argv[1])
if uid:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
out = {}
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    udp = host.startswith("u")
    host = host.removeprefix("u").strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.settimeout(3.0)
        try:
            if udp:
                s.sendto(b"ping", (host, int(port)))
                s.recv(16)
            else:
                s.connect((host, int(port)))
            out[target] = "open"
        except OSError as exc:
            out[target] = errno.errorcode.get(exc.errno, "?") if exc.errno else "timeout"
print(json.dumps(out))
"""
# What a rejected local sender sees: EPERM (a datagram refused on its way out), EHOSTUNREACH (IPv4 tcp:
# the ICMP admin-prohibited came back) or EACCES (IPv6 tcp: the kernel acts on that ICMP only at the first
# SYN retransmit, about 1 s, hence the 3 s timeout above). Never "timeout", and never "open".
REJECTED = {"EHOSTUNREACH", "EACCES", "EPERM"}


def as_user(lan: Lan, uid: int, targets: list[str]) -> dict[str, str]:
    result: dict[str, str] = json.loads(lan["server"].python("-c", AS_USER, str(uid), *targets).stdout)
    return result


def probe_all(lan: Lan) -> dict[str, dict[str, dict[str, str]]]:
    server = lan["server"]
    running = {
        role: lan[role].probe_start([server.v4, server.v6], PORTS) for role in ALLOWED
    }  # all hosts at once: the whole table costs about one timeout
    return {role: probe_result(proc) for role, proc in running.items()}


def expected(outcome_of: dict[str, set[int]], server_addresses: list[str]) -> dict[str, dict[str, dict]]:
    return {
        role: {
            address: {str(port): "open" if port in allowed else "timeout" for port in PORTS}
            for address in server_addresses
        }
        for role, allowed in outcome_of.items()
    }


def test_without_a_firewall_every_host_reaches_every_port(lan: Lan) -> None:
    # The baseline that makes the other tests mean something: each timeout below is the firewall's doing.
    lan["server"].run("nft", "flush", "ruleset")
    everything = {role: set(PORTS) for role in ALLOWED}
    assert probe_all(lan) == expected(everything, [lan["server"].v4, lan["server"].v6])


def test_exactly_the_allowed_connections_open_over_ipv4_and_ipv6(firewalled: Lan) -> None:
    server = firewalled["server"]
    assert probe_all(firewalled) == expected(ALLOWED, [server.v4, server.v6])


def test_the_servers_link_local_address_is_dropped_too(firewalled: Lan) -> None:
    # Measured: v4-only rules left a dual-stack server open on its fe80:: address.
    target = f"{firewalled['server'].link_local()}%eth0"
    assert firewalled["untrusted"].probe([target], PORTS) == {
        target: {str(port): "timeout" for port in PORTS}
    }


def test_replies_to_the_servers_own_connections_come_back(firewalled: Lan) -> None:
    # established,related: DNS, updates and mail to the relay need their answers through a DROP policy.
    untrusted = firewalled["untrusted"]
    untrusted.listen("8081")
    try:
        result = firewalled["server"].probe([untrusted.v4, untrusted.v6], [8081])
    finally:
        untrusted.stop()
    assert result == {untrusted.v4: {"8081": "open"}, untrusted.v6: {"8081": "open"}}


def test_loopback_is_open_on_the_server(firewalled: Lan) -> None:
    result = firewalled["server"].probe(["127.0.0.1", "::1"], PORTS)
    assert result == {addr: {str(port): "open" for port in PORTS} for addr in ("127.0.0.1", "::1")}


def test_input_and_forward_policies_are_drop(firewalled: Lan) -> None:
    listing = firewalled["server"].run("nft", "list", "ruleset").stdout
    input_chains = [line for line in listing.splitlines() if "hook input" in line]
    forward_chains = [line for line in listing.splitlines() if "hook forward" in line]
    assert input_chains
    assert forward_chains
    assert all("policy drop" in line for line in input_chains + forward_chains)


def test_ipv4_rules_alone_would_leave_ipv6_open(lan: Lan, tmp_path: Path) -> None:
    # Why rules.v6 ships beside rules.v4: loading only the v4 file lets the untrusted host in over IPv6.
    server = lan["server"]
    rules = write_rules(tmp_path, ADDRESSES)
    server.run("nft", "flush", "ruleset")
    try:
        server.run("iptables-restore", str(rules / "rules.v4"))
        result = lan["untrusted"].probe([server.v4, server.v6], [22])
    finally:
        server.run("nft", "flush", "ruleset")
    assert result == {server.v4: {"22": "timeout"}, server.v6: {"22": "open"}}


def test_the_server_forwards_nothing(lan: Lan, tmp_path: Path) -> None:
    # forward policy DROP, for real: even with routing switched on, the untrusted host cannot use the
    # server as a router to a host behind it. Without the firewall it can (the baseline half).
    server, untrusted = lan["server"], lan["untrusted"]
    inner = lan.behind("inner", via="server", v4="198.51.100.10", v6="2001:db8:1::10")
    server.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    untrusted.run("ip", "route", "add", "198.51.100.0/24", "via", server.v4)
    untrusted.run("ip", "-6", "route", "add", "2001:db8:1::/64", "via", server.v6)
    inner.listen("8080")
    try:
        server.run("nft", "flush", "ruleset")
        routed = untrusted.probe([inner.v4, inner.v6], [8080])
        for backend in ("nft", "iptables"):
            load_firewall(server, backend, write_rules(tmp_path, ADDRESSES))
            dropped = untrusted.probe([inner.v4, inner.v6], [8080])
            assert dropped == {inner.v4: {"8080": "timeout"}, inner.v6: {"8080": "timeout"}}, backend
    finally:
        server.run("nft", "flush", "ruleset")
        server.run("sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")
        untrusted.run("ip", "route", "del", "198.51.100.0/24", check=False)
        untrusted.run("ip", "-6", "route", "del", "2001:db8:1::/64", check=False)
    assert routed == {inner.v4: {"8080": "open"}, inner.v6: {"8080": "open"}}


def test_a_local_only_user_sends_only_on_loopback(firewalled: Lan) -> None:
    # The mailer and the web app (strongroom-web) and keyd talk to this host only. Their units say so
    # with IPAddressDeny=, which systemd enforces only on a cgroup-v2 host; this rule holds everywhere.
    server, untrusted = firewalled["server"], firewalled["untrusted"]
    outside = [
        f"{untrusted.v4}:8081",
        f"[{untrusted.v6}]:8081",
        f"u{untrusted.v4}:8082",
        f"u[{untrusted.v6}]:8082",
    ]
    inside = ["127.0.0.1:8080", "[::1]:8080", f"{server.v4}:8080", f"[{server.v6}]:8080"]
    untrusted.listen("8081", "u8082")
    try:
        local = as_user(firewalled, LOCAL_UID, outside + inside)
        other = as_user(firewalled, OTHER_UID, outside)
        root = as_user(firewalled, 0, outside)
    finally:
        untrusted.stop()
    assert {t: local[t] in REJECTED for t in outside} == dict.fromkeys(outside, True), local
    # Its own address is loopback too (the route goes through lo): the server's own services stay reachable.
    assert {t: local[t] for t in inside} == dict.fromkeys(inside, "open"), local
    assert other == dict.fromkeys(outside, "open")
    assert root == dict.fromkeys(outside, "open")


def test_without_the_rule_the_same_user_gets_out(lan: Lan, tmp_path: Path) -> None:
    # The baseline: the refusals above are the rule's doing, not the LAN's.
    untrusted = lan["untrusted"]
    outside = [f"{untrusted.v4}:8081", f"[{untrusted.v6}]:8081"]
    lan["server"].run("nft", "flush", "ruleset")
    untrusted.listen("8081")
    try:
        assert as_user(lan, LOCAL_UID, outside) == dict.fromkeys(outside, "open")
    finally:
        untrusted.stop()
