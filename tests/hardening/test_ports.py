"""The listening-ports check on a bare box: a fresh network namespace has nothing listening; a listener
opened there is reported with its process, and only an --allow rule makes it acceptable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardening.ports import AllowRule, AllowRuleError, Listener, listening, parse_allow, unexpected
from tests.hardening.conftest import Lan

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bare() -> Iterator[Lan]:
    with Lan(["server"]) as lan:
        yield lan


def cli(lan: Lan, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", lan["server"].netns, sys.executable, "-m", "hardening.ports", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_a_bare_box_has_no_listening_ports(bare: Lan) -> None:
    result = cli(bare, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert cli(bare).stdout.strip() == "no listening sockets"


def test_a_new_listener_is_reported_with_its_process_and_fails_the_check(bare: Lan) -> None:
    bare["server"].listen("8080", "u5353")
    pid = bare["server"].processes[0].pid  # `ip netns exec` execs the listener: same pid
    result = cli(bare, "--json")
    assert result.returncode == 1
    rows = json.loads(result.stdout)
    assert {(r["proto"], r["address"], r["port"], r["allowed"]) for r in rows} == {
        ("tcp", "::", 8080, False),
        ("udp", "::", 5353, False),
    }
    assert {r["pid"] for r in rows} == {pid}
    assert {r["process"] for r in rows} == {Path(sys.executable).name[:15]}
    assert "unexpected tcp :::8080" in cli(bare).stdout


def test_allow_rules_cover_exactly_what_they_name(bare: Lan) -> None:
    bare["server"].listen("8080", "u5353")
    assert cli(bare, "--allow", "tcp:8080", "--allow", "udp:5353").returncode == 0
    assert cli(bare, "--allow", "tcp:8080").returncode == 1  # udp 5353 still unexpected
    assert cli(bare, "--allow", "tcp:[::]:8080", "--allow", "udp:5353").returncode == 0
    assert cli(bare, "--allow", "tcp:127.0.0.1:8080", "--allow", "udp:5353").returncode == 1


def test_listening_sees_a_loopback_listener_of_this_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        found = [item for item in listening() if item.port == port and item.proto == "tcp"]
    assert found == [Listener("tcp", "127.0.0.1", port, os.getpid(), found[0].process if found else None)]


@pytest.mark.parametrize(
    ("spec", "refusal"),
    [
        ("22", "must start with tcp: or udp:"),
        ("sctp:22", "must start with tcp: or udp:"),
        ("tcp:", "the port must be a number"),
        ("tcp:0", "the port must be a number"),
        ("tcp:65536", "the port must be a number"),
        ("tcp:-1", "the port must be a number"),
        ("tcp:ssh", "the port must be a number"),
        ("tcp:localhost:22", "'localhost' is not an IP address"),
        ("tcp:::1:22", "write an IPv6 address in brackets"),
        ("tcp:[localhost]:22", "'[localhost]' is not an IP address"),
        ("tcp:" + "1" * 80, "too long"),
    ],
)
def test_bad_allow_rules_are_refused(spec: str, refusal: str) -> None:
    with pytest.raises(AllowRuleError) as caught:
        parse_allow(spec)
    assert refusal in str(caught.value)


def test_good_allow_rules() -> None:
    assert parse_allow("tcp:22") == AllowRule("tcp", 22)
    assert parse_allow("udp:51820") == AllowRule("udp", 51820)
    assert parse_allow("tcp:127.0.0.1:8000") == AllowRule("tcp", 8000, "127.0.0.1")
    assert parse_allow("tcp:[::1]:8000") == AllowRule("tcp", 8000, "::1")
    web = Listener("tcp", "0.0.0.0", 443, 1, "apache2")  # noqa: S104 - a record, nothing binds
    assert unexpected([web], [AllowRule("tcp", 443)]) == []
    assert unexpected([web], [AllowRule("udp", 443)]) == [web]
