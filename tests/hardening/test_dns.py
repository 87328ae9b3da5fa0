"""The resolv.conf renderer: glibc on the firewalled server really asks the external resolver it names
(a tiny DNS responder in its own namespace, over IPv4 and IPv6), and bad nameservers are refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardening.dns import ResolverConfigError, render
from hardening.firewall import parse_config, render_nft
from tests.hardening.conftest import Lan

REPO = Path(__file__).resolve().parents[2]
ANSWER = "198.51.100.7"

# Answers every A query with ANSWER, anything else with an empty answer (NODATA).
RESPONDER = r"""
import socket, struct, sys
answer = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 53))
print("ready", flush=True)
while True:
    query, peer = s.recvfrom(512)
    end = query.index(b"\0", 12) + 5
    qtype = struct.unpack("!H", query[end - 4:end - 2])[0]
    count = 1 if qtype == 1 else 0
    reply = query[:2] + struct.pack("!HHHHH", 0x8180, 1, count, 0, 0) + query[12:end]
    if count:
        reply += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + answer
    s.sendto(reply, peer)
"""


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with Lan(["server", "resolver"]) as built:
        resolver = built["resolver"]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", resolver.netns, sys.executable, "-c", RESPONDER, ANSWER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        resolver.processes.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        # The server behind its real firewall: the answers come back only as established/related traffic.
        rules = render_nft(parse_config('admins = ["192.0.2.10"]\nemployees = []\ncrm = []\n'))
        rules_file = tmp_path_factory.mktemp("dns") / "strongroom.nft"
        rules_file.write_text(rules)
        built["server"].run("nft", "-f", str(rules_file))
        yield built


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_glibc_on_the_server_asks_the_rendered_resolver(lan: Lan, family: str) -> None:
    resolver = lan["resolver"]
    (lan.etc("server") / "resolv.conf").write_text(render([resolver.v4 if family == "v4" else resolver.v6]))
    result = lan["server"].run("getent", "ahostsv4", "vault-test.example", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == ANSWER


def test_a_resolver_that_is_not_listed_is_not_asked(lan: Lan) -> None:
    # The baseline: point glibc elsewhere (a host that does not exist) and the lookup fails.
    (lan.etc("server") / "resolv.conf").write_text(render(["192.0.2.99"]).replace("timeout:2", "timeout:1"))
    result = lan["server"].run("getent", "ahostsv4", "vault-test.example", check=False, timeout=60)
    assert result.returncode != 0


def test_the_rendered_file() -> None:
    text = render(["192.0.2.53", "2001:db8::53"])
    assert text.splitlines()[1:] == [
        "nameserver 192.0.2.53",
        "nameserver 2001:db8::53",
        "options timeout:2 attempts:2 edns0",
    ]
    assert "trust-ad" not in text


@pytest.mark.parametrize(
    ("nameservers", "refusal"),
    [
        ([], "at least one nameserver"),
        (["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"], "at most 3 nameservers"),
        (["dns.example"], "'dns.example' is not an IP address"),
        (["127.0.0.53"], "must be one host's address"),
        (["::1"], "must be one host's address"),
        (["0.0.0.0"], "must be one host's address"),  # noqa: S104 - a refused input, nothing binds
        (["fe80::1"], "must be one host's address"),
        (["fe80::1%eth0"], "without a %zone"),
        (["240.0.0.1"], "reserved"),
        (["::ffff:192.0.2.53"], "an IPv4 address written as IPv4"),
        (["192.0.2.53\nnameserver 203.0.113.66"], "is not an IP address"),
        (["192.0.2.53", "192.0.2.53"], "listed twice"),
    ],
)
def test_bad_nameservers_are_refused(nameservers: list[str], refusal: str) -> None:
    with pytest.raises(ResolverConfigError) as caught:
        render(nameservers)
    assert refusal in str(caught.value)


def test_the_cli_refuses_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hardening.dns", "render", "--nameserver", "localhost"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "'localhost' is not an IP address" in result.stderr
    assert "Traceback" not in result.stderr
