"""The firewall of the installed server, tested from each network the way docs/hardening.md says to:
the project's own prober (`python -m hardening.firewall probe`) run from a host on that network.

As configured by the test's settings ([network] in tests/system/server.py): tcp 22 from the admins'
network, tcp 443 from the employees' network and the CRM host, nothing from anywhere else, IPv4 and
IPv6 alike. "Dropped" means the prober saw no answer at all (timeout), not a refusal: a refusal would
tell a scanner the address is alive.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.system.server import REPO, Server

SSH, HTTPS = 22, 443
# The two doors, and ports a scanner tries first or that something on this server uses internally
# (postfix 25, MariaDB 3306, syslog-over-TLS 6514 outbound only, gunicorn never on TCP).
PORTS = (SSH, HTTPS, 25, 80, 3306, 6514, 8000, 8080, 8443, 2222)

# role -> the ports that must be open from there; every other port must be dropped.
OPEN_FROM = {
    "untrusted": set(),
    "admins": {SSH},
    "employees": {HTTPS},
    "crm": {HTTPS},
    "loghost": set(),
}


def probe(server: Server, role: str, family: int, ports: tuple[int, ...] = PORTS) -> dict[int, str]:
    """{port: open|refused|timeout} from a host on network `role` toward the server's address there."""
    host = server.address(role, family)
    argv = ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "hardening.firewall", "probe", "--json",
            "--timeout", "2", host, *(a for p in ports for a in ("--port", str(p)))]  # fmt: skip
    out = server.network.client(role, argv, timeout=60)
    table = json.loads(out.stdout)
    return {int(port): outcome for port, outcome in table[host].items()}


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("role", list(OPEN_FROM))
def test_only_the_configured_doors_answer(server: Server, role: str, family: int) -> None:
    outcomes = probe(server, role, family)
    expected = {port: "open" if port in OPEN_FROM[role] else "timeout" for port in PORTS}
    assert outcomes == expected, f"from {role} (IPv{family}) toward {server.address(role, family)}"


def test_nothing_else_listens_beyond_loopback(server: Server) -> None:
    """Defence in depth under the firewall: only sshd and Apache listen on a non-loopback address."""
    out = server.container.run(["ss", "-H", "-lntu"]).stdout
    exposed = []
    for line in out.splitlines():
        fields = line.split()
        proto, local = fields[0], fields[4]
        address, _, port = local.rpartition(":")
        address = address.strip("[]").split("%")[0]
        if address in ("127.0.0.1", "::1") or address.startswith("127."):
            continue
        exposed.append((proto, address, int(port)))
    assert exposed, out  # the parsing found sshd and Apache at least
    assert {(proto, port) for proto, _addr, port in exposed} <= {("tcp", SSH), ("tcp", HTTPS)}, out
