"""Real network namespaces for the hardening tests: a small LAN of hosts joined by a bridge, IPv4 and IPv6.

`Lan` builds one namespace per host plus a "switch" namespace holding the bridge, gives each host a
documentation-range address (192.0.2.0/24, 2001:db8::/64: they exist only inside these namespaces), and
deletes everything on exit, also when the test failed. Names carry the pid and a random suffix because
other suites build namespaces at the same time. Other hardening tests may import `Lan` and `LISTENER`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

from hardening.firewall import Variant, parse_config, render_iptables, render_nft
from tests.support import need_binary, need_root

REPO = Path(__file__).resolve().parents[2]
LAN_V4 = "192.0.2.{}"
LAN_V6 = "2001:db8::{}"
HOST_NUMBERS = {"server": 1, "admin": 10, "employee": 21, "crm": 30, "resolver": 53, "untrusted": 66}
DEFAULT_ROLES = ("server", "admin", "employee", "crm", "untrusted")
PROBE_TIMEOUT = 1.0

# A TCP (and, with a "u" prefix, UDP echo) listener on every address of its namespace, v4 and v6 alike.
LISTENER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    udp = spec.startswith("u")
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(spec.lstrip("u"))))
    if not udp:
        s.listen(64)
    sel.register(s, selectors.EVENT_READ, udp)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data:
            data, peer = key.fileobj.recvfrom(512)
            key.fileobj.sendto(data, peer)
        else:
            key.fileobj.accept()[0].close()
"""

# Sends one datagram per target and reports whether the echo came back.
UDP_PROBE = r"""
import json, socket, sys
timeout, out = float(sys.argv[1]), {}
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"ping", (host.strip("[]"), int(port)))
        try:
            out[target] = "open" if s.recv(16) == b"ping" else "garbled"
        except TimeoutError:
            out[target] = "timeout"
        except OSError:
            out[target] = "refused"
print(json.dumps(out))
"""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Host:
    role: str
    netns: str
    v4: str
    v6: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def python(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, *argv, check=check)

    def listen(self, *ports: str) -> None:
        """Start LISTENER on the ports ("22", "443", "u51820") and wait until it is bound."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", LISTENER, *ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise AssertionError(f"listener in {self.role} did not start: {proc.communicate()[1]}")

    def probe_start(self, hosts: Sequence[str], ports: Sequence[int]) -> subprocess.Popen[str]:
        """Start `python -m hardening.firewall probe` here; `probe_result` collects it (hosts run at once)."""
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "hardening.firewall", "probe"]
        argv += ["--json", "--timeout", str(PROBE_TIMEOUT)]
        for port in ports:
            argv += ["--port", str(port)]
        return subprocess.Popen(
            [*argv, *hosts], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def probe(self, hosts: Sequence[str], ports: Sequence[int]) -> dict[str, dict[str, str]]:
        return probe_result(self.probe_start(hosts, ports))

    def udp_probe(self, targets: Sequence[str]) -> dict[str, str]:
        out = self.python("-c", UDP_PROBE, str(PROBE_TIMEOUT), *targets).stdout
        result: dict[str, str] = json.loads(out)
        return result

    def link_local(self, ifname: str = "eth0") -> str:
        out = self.run("ip", "-j", "-6", "addr", "show", "dev", ifname, "scope", "link").stdout
        # iproute2 lists filtered-out addresses as empty objects: take the first real one.
        found = [info["local"] for info in json.loads(out)[0]["addr_info"] if "local" in info]
        assert found, f"{self.role} has no link-local address on {ifname}"
        return str(found[0])

    def stop(self) -> None:
        for proc in self.processes:
            proc.kill()
            proc.communicate()
        self.processes.clear()


def probe_result(proc: subprocess.Popen[str]) -> dict[str, dict[str, str]]:
    out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"probe failed: {err.strip()}")
    result: dict[str, dict[str, str]] = json.loads(out)
    return result


class Lan:
    """Hosts on one bridged segment, each in its own network namespace (`with Lan(roles) as lan:`)."""

    def __init__(self, roles: Sequence[str] = DEFAULT_ROLES) -> None:
        need_root()
        for tool in ("ip", "nft"):
            need_binary(tool)
        self.prefix = f"sr{os.getpid()}{secrets.token_hex(2)}"
        self.switch = f"{self.prefix}-switch"
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.roles = list(roles)

    def __enter__(self) -> Lan:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def __getitem__(self, role: str) -> Host:
        return self.hosts[role]

    def _netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        # No duplicate address detection: addresses are usable at once instead of after ~1 s "tentative".
        for key in ("net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0"):
            _run(["ip", "netns", "exec", name, "sysctl", "-qw", key])
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        self._netns(self.switch)
        _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        for index, role in enumerate(self.roles):
            number = HOST_NUMBERS[role]
            host = Host(role, f"{self.prefix}-{role}", LAN_V4.format(number), LAN_V6.format(number))
            self._netns(host.netns)
            port = f"port{index}"
            self.link(self.switch, port, host.netns, "eth0")
            _run(["ip", "-n", self.switch, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", host.netns, "addr", "add", f"{host.v4}/24", "dev", "eth0"])
            _run(["ip", "-n", host.netns, "addr", "add", f"{host.v6}/64", "dev", "eth0", "nodad"])
            self.hosts[role] = host

    def behind(self, role: str, *, via: str, v4: str, v6: str) -> Host:
        """A host on its own segment behind `via` (veth `inside` there, `eth0` here), with routes back."""
        host = Host(role, f"{self.prefix}-{role}", v4, v6)
        self._netns(host.netns)
        self.hosts[role] = host
        gateway = self.hosts[via]
        self.link(gateway.netns, "inside", host.netns, "eth0")
        gw4, gw6 = v4.rsplit(".", 1)[0] + ".1", v6.rsplit(":", 1)[0] + ":1"
        _run(["ip", "-n", gateway.netns, "addr", "add", f"{gw4}/24", "dev", "inside"])
        _run(["ip", "-n", gateway.netns, "addr", "add", f"{gw6}/64", "dev", "inside", "nodad"])
        _run(["ip", "-n", host.netns, "addr", "add", f"{v4}/24", "dev", "eth0"])
        _run(["ip", "-n", host.netns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad"])
        _run(["ip", "-n", host.netns, "route", "add", "default", "via", gw4])
        _run(["ip", "-n", host.netns, "-6", "route", "add", "default", "via", gw6])
        return host

    def etc(self, role: str) -> Path:
        """/etc/netns/<ns>/: `ip netns exec` mounts its subfolders over /etc/<name> for that host only (the
        folder must exist in /etc too), so a host gets a private /etc/wireguard or /etc/resolv.conf."""
        path = Path("/etc/netns") / self.hosts[role].netns
        path.mkdir(parents=True, exist_ok=True)
        return path

    def link(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair with one end in each namespace, both up."""
        _run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
        _run(["ip", "-n", ns_a, "link", "set", if_a, "up"])
        _run(["ip", "-n", ns_b, "link", "set", if_b, "up"])

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop()
        for name in reversed(self.namespaces):
            _run(["ip", "netns", "del", name], check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        self.namespaces.clear()


def load_firewall(server: Host, backend: str, rules_dir: Path) -> None:
    """Replace the server namespace's ruleset with the rendered files (never run outside a namespace)."""
    server.run("nft", "flush", "ruleset")
    if backend == "nft":
        server.run("nft", "-f", str(rules_dir / "strongroom.nft"))
    elif backend == "iptables":
        server.run(need_binary("iptables-restore"), str(rules_dir / "rules.v4"))
        server.run(need_binary("ip6tables-restore"), str(rules_dir / "rules.v6"))
    else:
        raise ValueError(backend)


def write_rules(directory: Path, text: str, variant: Variant = Variant.PLAIN) -> Path:
    config = parse_config(text)
    (directory / "strongroom.nft").write_text(render_nft(config, variant))
    (directory / "rules.v4").write_text(render_iptables(config, variant, family=4))
    (directory / "rules.v6").write_text(render_iptables(config, variant, family=6))
    return directory


def keypair() -> tuple[str, str]:
    wg = need_binary("wg")
    private = subprocess.run([wg, "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    public = subprocess.run([wg, "pubkey"], input=private, capture_output=True, text=True, check=True)
    return private, public.stdout.strip()


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    with Lan() as built:
        built["server"].listen("22", "443", "8080")
        yield built
