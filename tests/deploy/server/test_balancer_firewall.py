"""The firewall the install writes for a web node behind a balancer, loaded in a real network
namespace (tests/hardening/conftest.py's Lan): the balancer reaches 443 and the health agent's port,
and the agent's answer, sent from a socket of strongroom-web's uid, gets past the owner rule that
keeps that uid on loopback; another host reaches neither. Without the install's output rule the
answer is refused: the rule is what makes the agent work, not decoration."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.plan import Plan
from deploy.server.settings import parse
from tests.deploy.server.test_balancer import node
from tests.hardening.conftest import Host, Lan
from tests.support import need_binary, need_root

CHECKOUT = Path(__file__).resolve().parents[3]
WEB_UID, KEYD_UID = 64991, 64992
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by another uid (this test's own python may not be)
AGENT_PORT = 9707

# The agent's shape: one line to each connection, then close (webapp/health_agent.py).
AGENT = r"""
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(b"up\n")
    conn.close()
"""

ASK = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5) as c:
        c.settimeout(1.5)
        print(c.recv(64).decode().strip() or "closed")
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    need_root()
    need_binary("setpriv")
    with Lan(("server", "employee", "untrusted")) as built:
        server = built["server"]
        server.listen("443")
        agent = subprocess.Popen(
            ["ip", "netns", "exec", server.netns, "setpriv", f"--reuid={WEB_UID}", f"--regid={WEB_UID}",
             "--clear-groups", SYSTEM_PYTHON, "-c", AGENT, server.v4, str(AGENT_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        server.processes.append(agent)
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "ready", agent.stderr
        yield built


def rules(tmp_path: Path, lan: Lan) -> Path:
    """The install's firewall step for this LAN: the employee's host plays the balancer."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\nstrongroom-web:x:{WEB_UID}:{WEB_UID}::/:/x\n"
        f"strongroom-keyd:x:{KEYD_UID}:{KEYD_UID}::/:/x\n"
    )
    (etc / "group").write_text("root:x:0:\n")
    s = parse(node(f'addresses = ["{lan["employee"].v4}"]\nlisten = "{lan["server"].v4}"\n'))
    steps.firewall(Plan(root=tmp_path, check=False, out=lambda _line: None), CHECKOUT, s)
    return tmp_path / "etc/strongroom/firewall/strongroom.nft"


def load(server: Host, path: Path) -> None:
    server.run("nft", "flush", "ruleset")
    server.run("nft", "-f", str(path))


def ask(host: Host, server: Host, port: int) -> str:
    return host.run(SYSTEM_PYTHON, "-c", ASK, server.v4, str(port)).stdout.strip()


def test_the_balancer_alone_reaches_443_and_the_agent(tmp_path: Path, lan: Lan) -> None:
    server = lan["server"]
    load(server, rules(tmp_path, lan))
    assert ask(lan["employee"], server, AGENT_PORT) == "up"
    assert ask(lan["employee"], server, 443) == "closed"  # connected; the listener just closes
    for port in (AGENT_PORT, 443):
        assert ask(lan["untrusted"], server, port) in ("TimeoutError", "timeout"), port
    # The owner rule still holds for anything else of that uid: no new connection out of the host.
    out = server.run(
        "setpriv", f"--reuid={WEB_UID}", f"--regid={WEB_UID}", "--clear-groups",
        SYSTEM_PYTHON, "-c", ASK, lan["employee"].v4, "443",
    ).stdout.strip()  # fmt: skip
    assert out == "OSError", out  # "No route to host": the owner rule's admin-prohibited


def test_without_the_output_rule_the_answer_is_refused(tmp_path: Path, lan: Lan) -> None:
    server = lan["server"]
    path = rules(tmp_path, lan)
    full = path.read_text()
    kept = [line for line in full.splitlines(True) if not line.startswith("insert rule")]
    assert len(kept) == len(full.splitlines(True)) - 1
    path.write_text("".join(kept))
    load(server, path)
    answer = ask(lan["employee"], server, AGENT_PORT)
    assert answer != "up", answer
    path.write_text(full)
    load(server, path)
    assert ask(lan["employee"], server, AGENT_PORT) == "up"
