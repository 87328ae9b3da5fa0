"""The CA host's side of the CRL push: send publish/crl.pem to every web node over SSH.

With several web nodes, each node's Apache needs each new CRL; the CA host sends it, because the CA
is the one that knows when there is a new one (`push-crl` is the reload hook, docs/ca.md). The other
side is ca/crl_receive.py, forced by the node's authorized_keys line: this key can do nothing else.

The OpenSSH client, locked down: no config file (`-F /dev/null`: neither ~/.ssh/config nor
/etc/ssh/ssh_config can add a ProxyCommand or turn host key checking off), only the node's pinned
host key (StrictHostKeyChecking=yes against its own known_hosts file, no global file, never
learning a key), only the configured identity (no agent), never a prompt (BatchMode), no
forwarding, and a connect timeout. All nodes are pushed at once, so a node that is down costs one
timeout, not one per node.
"""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ca.config import CrlNode

CONNECT_TIMEOUT = 10
# The whole push to one node: connect, send, the node's checks and its Apache reload. Under the CA's
# 60 s limit for the reload hook (ca/authority.py), so the hook reports which node failed.
PUSH_TIMEOUT = 40
_MAX_DETAIL = 200  # what one node's ssh or receiver said


@dataclass(frozen=True)
class Outcome:
    node: CrlNode
    problem: str | None  # None: installed and Apache reloaded

    @property
    def label(self) -> str:
        return f"{self.node.name} ({self.node.host}:{self.node.port})"


def ssh_argv(node: CrlNode, *, ssh: str = "ssh") -> list[str]:
    """The ssh command line for one node (no remote command: the node's key forces it)."""
    options = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": str(node.known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "HashKnownHosts": "no",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "IdentityFile": str(node.identity),
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "ConnectTimeout": str(CONNECT_TIMEOUT),
        "ServerAliveInterval": "5",
        "ServerAliveCountMax": "3",
        "ClearAllForwardings": "yes",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "PermitLocalCommand": "no",
        "ControlMaster": "no",
        "ControlPath": "none",
        "LogLevel": "ERROR",
    }
    argv = [ssh, "-F", "/dev/null", "-T"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return [*argv, "-p", str(node.port), "-l", node.user, node.host]


def push(crl: bytes, nodes: Sequence[CrlNode], *, ssh: str = "ssh") -> list[Outcome]:
    """Send `crl` to every node at once; one Outcome per node, in the order given."""
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(len(nodes), 16)) as pool:
        return list(pool.map(lambda node: Outcome(node, _push_one(crl, node, ssh)), nodes))


def _push_one(crl: bytes, node: CrlNode, ssh: str) -> str | None:
    if problem := _unsafe_files(node):
        return problem
    try:
        done = subprocess.run(
            ssh_argv(node, ssh=ssh),
            input=crl,
            capture_output=True,
            timeout=PUSH_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {PUSH_TIMEOUT} s"
    except OSError as e:
        return f"cannot run ssh: {e.strerror or type(e).__name__}"
    if done.returncode == 0:
        return None
    detail = last_line(done.stderr.decode("utf-8", "replace"))
    if done.returncode == 255:  # ssh's own failure: not reached, host key, authentication
        return f"ssh failed: {detail.removeprefix('ssh: ') or 'no message'}"
    return f"the node refused (exit {done.returncode}): {detail or 'no message'}"


def _unsafe_files(node: CrlNode) -> str | None:
    # ssh checks the identity's mode itself but happily reads a known_hosts file anyone may rewrite:
    # whoever can write it chooses which host key is "pinned".
    for path, mask, what in (
        (node.known_hosts, 0o022, "writable by others"),
        (node.identity, 0o077, "readable by others"),
    ):
        try:
            st = Path(path).stat()
        except OSError as e:
            return f"cannot read {path}: {e.strerror or type(e).__name__}"
        if stat.S_IMODE(st.st_mode) & mask:
            return f"{path} is {what}: chmod go-{'w' if mask == 0o022 else 'rwx'} it"
    return None


def last_line(text: str, limit: int = _MAX_DETAIL) -> str:
    """The last non-empty line of a child's stderr, printable ASCII only and bounded: it goes into
    one-line messages and the operations log (the node and ssh write no secrets, but a message is
    no place for control characters either)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    clean = "".join(c if " " <= c <= "~" else "?" for c in lines[-1]).removeprefix("Error: ")
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def summary(outcomes: Sequence[Outcome]) -> str | None:
    """One line naming every node that still serves the old CRL, or None if all got the new one."""
    failed = [o for o in outcomes if o.problem]
    if not failed:
        return None
    names = "; ".join(f"{o.label}: {o.problem}" for o in failed)
    return (
        f"{names}; {len(failed)} of {len(outcomes)} web node(s) still serve the OLD CRL: "
        "fix them, then run `python -m ca push-crl`"
    )
