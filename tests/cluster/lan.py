"""One switched LAN of network namespaces: the machines of a multi-node deployment, on this host.

    lan = Lan.create(["db1", "db2", "db3", "web1", "web2", "lb", "client"])
    lan.address("web1")                     # "192.0.2.14"
    lan.run("web1", ["ip", "addr"])         # a command inside web1's namespace
    proc = lan.popen("db1", [mariadbd, ...])
    lan.cut("db2") / lan.mend("db2")        # unplug / replug db2's cable
    lan.teardown()

A namespace `<tag>-switch` holds a bridge; every host is a namespace with one veth pair into it
(`eth0` on the host's side) and one address of 192.0.2.0/24, a documentation range that exists only
inside these namespaces. No namespace has a default route: nothing here reaches beyond the LAN, and
the host's own interfaces are never touched (every link is made inside a namespace). Names carry the
pid and a counter, so parallel runs never clash.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")
PREFIX = "sr-lan"
SUBNET = ipaddress.ip_network("192.0.2.0/24")
FIRST_HOST = 10  # hosts get .10, .11, ... in the order they are named
_counter = count(1)


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, input=input
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


@dataclass
class Lan:
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid() % 100000}-{next(_counter)}")
    hosts: dict[str, str] = field(default_factory=dict)  # name -> IPv4 address

    @classmethod
    def create(cls, names: Sequence[str]) -> Lan:
        lan = cls()
        try:
            lan._create(names)
        except BaseException:
            lan.teardown()
            raise
        return lan

    @property
    def switch(self) -> str:
        return f"{self.tag}-switch"

    def netns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def address(self, name: str) -> str:
        return self.hosts[name]

    def _create(self, names: Sequence[str]) -> None:
        run(["ip", "netns", "add", self.switch])
        run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        for i, name in enumerate(names):
            ns, port = self.netns(name), f"p{i}"
            address = str(SUBNET[FIRST_HOST + i])
            run(["ip", "netns", "add", ns])
            self.hosts[name] = address  # from here on, teardown removes it
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # Made inside the switch's namespace: the host's interface names are never touched.
            run(["ip", "-n", self.switch, "link", "add", port, "type", "veth",
                 "peer", "name", "eth0", "netns", ns])  # fmt: skip
            run(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `name`'s namespace (for Popen, or to hand to another runner)."""
        return ["ip", "netns", "exec", self.netns(name), *argv]

    def run(self, name: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return run(self.argv(name, argv), check=check, timeout=timeout, input=input)

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(name, argv), **kwargs)

    def cut(self, name: str) -> None:
        """Unplug `name` from the switch (its processes keep running, as on a failed link)."""
        run(["ip", "-n", self.switch, "link", "set", self._port(name), "down"])

    def mend(self, name: str) -> None:
        run(["ip", "-n", self.switch, "link", "set", self._port(name), "up"])

    def _port(self, name: str) -> str:
        return f"p{list(self.hosts).index(name)}"

    def namespaces(self) -> list[str]:
        return [self.switch, *(self.netns(n) for n in self.hosts)]

    def teardown(self) -> None:
        for ns in self.namespaces():
            if (NETNS_DIR / ns).exists():
                run(["ip", "netns", "delete", ns], check=False)
