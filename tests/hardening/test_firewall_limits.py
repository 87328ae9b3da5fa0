"""The per-source connection limit, loaded for real in a server namespace and tried with real TCP.

A listener that holds every connection (and echoes) stands in for Apache and sshd. A client over its
list's limit gets its extra connections refused at once (a TCP reset: ECONNREFUSED), while its first ones
stay open and answer; a colleague on the same list is not affected; the CRM has its own, higher limit; and
the limit is on connections held at once, so after closing them the same client connects again. Each case
runs against the nftables file and the iptables-restore files, over IPv4 and IPv6.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.conftest import LAN_V4, LAN_V6, Host, Lan, load_firewall, write_rules

EMPLOYEES, CRM, ADMINS = 3, 5, 2
# The LAN's "untrusted" host is listed as a second employee here: the colleague who must not suffer.
ADDRESSES = f"""
admins = ["{LAN_V4.format(10)}", "{LAN_V6.format(10)}"]
employees = ["{LAN_V4.format(21)}", "{LAN_V4.format(66)}", "{LAN_V6.format(21)}", "{LAN_V6.format(66)}"]
crm = ["{LAN_V4.format(30)}", "{LAN_V6.format(30)}"]

[connection_limits]
admins = {ADMINS}
employees = {EMPLOYEES}
crm = {CRM}
"""

# Accepts and holds every connection, echoing what it receives, until killed.
HOLDER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(port)))
    s.listen(128)
    sel.register(s, selectors.EVENT_READ, "listen")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "listen":
            conn = key.fileobj.accept()[0]
            sel.register(conn, selectors.EVENT_READ, "conn")
        else:
            data = key.fileobj.recv(64)
            if data:
                key.fileobj.sendall(data)
            else:
                sel.unregister(key.fileobj)
                key.fileobj.close()
"""

# Opens COUNT connections one after another and prints each outcome ("open", "timeout" or the errno's
# name); then waits for a line on stdin, checks that every open one still echoes ("alive") and exits,
# closing them all.
CLIENT = r"""
import errno, json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
held, out = [], []
for _ in range(count):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3.0)
    try:
        s.connect((host, port))
        held.append(s)
        out.append("open")
    except OSError as exc:
        s.close()
        out.append(errno.errorcode.get(exc.errno, "?") if exc.errno else "timeout")
print(json.dumps(out), flush=True)
sys.stdin.readline()
alive = []
for s in held:
    try:
        s.sendall(b"x")
        alive.append("alive" if s.recv(1) == b"x" else "closed")
    except OSError as exc:
        alive.append(errno.errorcode.get(exc.errno, "?") if exc.errno else "timeout")
    s.close()
print(json.dumps(alive), flush=True)
"""


class Client:
    """CLIENT running on one host: `opened` is the first report; `release()` checks and closes."""

    def __init__(self, host: Host, target: str, port: int, count: int) -> None:
        argv = [
            "ip",
            "netns",
            "exec",
            host.netns,
            sys.executable,
            "-c",
            CLIENT,
            target,
            str(port),
            str(count),
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise AssertionError(f"client on {host.role} failed: {self.proc.communicate()[1]}")
        self.opened: list[str] = json.loads(line)

    def release(self) -> list[str]:
        out, err = self.proc.communicate("\n", timeout=30)
        assert self.proc.returncode == 0, err
        alive: list[str] = json.loads(out)
        return alive


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    with Lan() as built:
        server = built["server"]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", server.netns, sys.executable, "-c", HOLDER, "22", "443"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        server.processes.append(proc)  # Lan.close() kills it
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.communicate()[1]
        yield built


@pytest.fixture(params=["nft", "iptables"])
def limited(request: pytest.FixtureRequest, lan: Lan, tmp_path: Path) -> Iterator[Lan]:
    load_firewall(lan["server"], request.param, write_rules(tmp_path, ADDRESSES))
    try:
        yield lan
    finally:
        lan["server"].run("nft", "flush", "ruleset")


def refused(n: int) -> list[str]:
    return ["ECONNREFUSED"] * n


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_a_client_over_its_limit_is_refused_and_nobody_else_is(limited: Lan, family: int) -> None:
    server = limited["server"]
    target = server.v4 if family == 4 else server.v6
    greedy = Client(limited["employee"], target, 443, EMPLOYEES + 2)
    crm = Client(limited["crm"], target, 443, CRM + 2)
    admin = Client(limited["admin"], target, 22, ADMINS + 2)
    # While those hold everything they were allowed, a colleague on the same list gets all of its share.
    colleague = Client(limited["untrusted"], target, 443, EMPLOYEES)
    assert greedy.opened == ["open"] * EMPLOYEES + refused(2)
    assert crm.opened == ["open"] * CRM + refused(2)
    assert admin.opened == ["open"] * ADMINS + refused(2)
    assert colleague.opened == ["open"] * EMPLOYEES
    # The refusals touched only the extra connections: the first ones still answer.
    assert greedy.release() == ["alive"] * EMPLOYEES
    assert crm.release() == ["alive"] * CRM
    assert admin.release() == ["alive"] * ADMINS
    assert colleague.release() == ["alive"] * EMPLOYEES
    # A limit on connections held at once, not on a total: once closed, the same client gets its share back.
    again = Client(limited["employee"], target, 443, EMPLOYEES)
    assert again.opened == ["open"] * EMPLOYEES
    assert again.release() == ["alive"] * EMPLOYEES


def test_without_the_firewall_the_same_client_holds_them_all(lan: Lan) -> None:
    # The baseline: the refusals above are the limit's doing, not the listener's backlog.
    lan["server"].run("nft", "flush", "ruleset")
    greedy = Client(lan["employee"], lan["server"].v4, 443, EMPLOYEES + 2)
    assert greedy.opened == ["open"] * (EMPLOYEES + 2)
    assert greedy.release() == ["alive"] * (EMPLOYEES + 2)
