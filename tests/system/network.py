"""The networks around the booted server: one namespace for the server, one per client network.

Each client network is its own namespace joined to the server's by a veth pair, with its own
documentation-range subnets (they exist only inside these namespaces):

    role        server side   IPv4 subnet          IPv6 subnet        server  client
    employees   employees     192.0.2.0/26         2001:db8:1::/64    .1/::1  .2/::2
    admins      admins        192.0.2.64/26        2001:db8:2::/64    .65/::1 .66/::2
    untrusted   untrusted     203.0.113.0/26       2001:db8:3::/64    .1/::1  .2/::2
    loghost     loghost       198.51.100.0/26      2001:db8:4::/64    .1/::1  .2/::2
    crm         crm           198.51.100.64/26     2001:db8:5::/64    .65/::1 .66/::2

The server's interface toward each network is named after it, the client's is `eth0`; there is no
default route anywhere, so nothing reaches beyond these subnets. Namespace names carry the pid and a
counter, so parallel runs never clash; `teardown` deletes them all (deleting a namespace deletes
its end of each veth pair, and with it the pair).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

NETNS_DIR = Path("/run/netns")
PREFIX = "strongroom-test"
_counter = count(1)

# role -> (IPv4 subnet, IPv6 subnet); the server is the first host of each, the client the second.
SUBNETS: dict[str, tuple[str, str]] = {
    "employees": ("192.0.2.0/26", "2001:db8:1::/64"),
    "admins": ("192.0.2.64/26", "2001:db8:2::/64"),
    "untrusted": ("203.0.113.0/26", "2001:db8:3::/64"),
    "loghost": ("198.51.100.0/26", "2001:db8:4::/64"),
    "crm": ("198.51.100.64/26", "2001:db8:5::/64"),
}


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, input=input
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result


@dataclass(frozen=True)
class Subnet:
    """One client network: its namespace, and the addresses on either side of its veth pair."""

    role: str
    netns: str
    ifname: str  # the server's interface toward this network
    v4: str  # the subnet, e.g. "192.0.2.64/26"
    v6: str
    server_v4: str
    server_v6: str
    client_v4: str
    client_v6: str


def _hosts(subnet: str) -> tuple[str, str]:
    net = ipaddress.ip_network(subnet)
    first, second = net[1], net[2]
    return str(first), str(second)


@dataclass
class Network:
    """The server's namespace and the client namespaces; `create()` builds them, `teardown()` removes them."""

    tag: str = field(default_factory=lambda: f"{PREFIX}-{os.getpid()}-{next(_counter)}")
    subnets: dict[str, Subnet] = field(default_factory=dict)

    @property
    def server_netns(self) -> str:
        return f"{self.tag}-server"

    @property
    def server_netns_path(self) -> Path:
        return NETNS_DIR / self.server_netns

    def namespaces(self) -> list[str]:
        return [self.server_netns, *(f"{self.tag}-{role}" for role in SUBNETS)]

    def create(self) -> Network:
        try:
            self._create()
        except BaseException:
            self.teardown()
            raise
        return self

    def _create(self) -> None:
        server = self.server_netns
        run(["ip", "netns", "add", server])
        run(["ip", "-n", server, "link", "set", "lo", "up"])
        for role, (v4, v6) in SUBNETS.items():
            client = f"{self.tag}-{role}"
            run(["ip", "netns", "add", client])
            run(["ip", "-n", client, "link", "set", "lo", "up"])
            # Made inside the server's namespace: the host's interface names are never touched.
            run(["ip", "-n", server, "link", "add", role, "type", "veth", "peer", "name", "eth0",
                 "netns", client])  # fmt: skip
            server_v4, client_v4 = _hosts(v4)
            server_v6, client_v6 = _hosts(v6)
            plen4, plen6 = v4.split("/")[1], v6.split("/")[1]
            # nodad: the addresses are usable at once instead of after duplicate address detection.
            for ns, ifname, a4, a6 in (
                (server, role, server_v4, server_v6),
                (client, "eth0", client_v4, client_v6),
            ):
                run(["ip", "-n", ns, "addr", "add", f"{a4}/{plen4}", "dev", ifname])
                run(["ip", "-n", ns, "addr", "add", f"{a6}/{plen6}", "dev", ifname, "nodad"])
                run(["ip", "-n", ns, "link", "set", ifname, "up"])
            self.subnets[role] = Subnet(
                role, client, role, v4, v6, server_v4, server_v6, client_v4, client_v6
            )

    def client(self, role: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30,
               input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a host command (curl, ssh, python) inside the client network `role`."""
        return run(["ip", "netns", "exec", self.subnets[role].netns, *argv], check=check, timeout=timeout,
                   input=input)  # fmt: skip

    def client_python(self, role: str, code: str, *args: str, check: bool = True, timeout: float = 30
                      ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a Python snippet (the test's own interpreter) inside the client network `role`."""
        return self.client(role, [sys.executable, "-c", code, *args], check=check, timeout=timeout)

    def teardown(self) -> None:
        for ns in self.namespaces():
            if (NETNS_DIR / ns).exists():
                run(["ip", "netns", "delete", ns], check=False)

    def leftovers(self) -> list[str]:
        return [ns for ns in self.namespaces() if (NETNS_DIR / ns).exists()]
