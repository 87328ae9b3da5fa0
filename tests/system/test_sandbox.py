"""The units' sandboxes, in force on the installed server (docs/deploy.md: what each option buys).

A probe (tests/system/sandbox_probe.py) runs in each service's own context: a runtime drop-in keeps
every option of the shipped unit (user, groups, seccomp filter, namespaces, address families, IP
allow-list, read-only file system) and swaps only the command, and `Type=oneshot` so that systemd
waits for it (the web unit is Type=notify, which a probe would never satisfy). The drop-in lives in
/run and is removed afterwards; the real service is restarted (keyd then comes back sealed and is
unsealed as the runbook says).

"The outside" is the admins' client address, where the test runs a listener: a connection that got
through would be seen there, so "unreachable" is an observation, not an absence of evidence.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from tests.support import stop_process
from tests.system import operator
from tests.system.container import Container
from tests.system.server import REPO, SRC, Server

# Not /var/tmp: every unit here has PrivateTmp=yes, so its /var/tmp is a private empty directory.
PROBE = "/usr/local/lib/strongroom-test/sandbox_probe.py"
DROPIN_NAME = "99-sandbox-probe.conf"  # sorts after the test's own mailer drop-in: its ExecStart wins
UNITS = ("strongroom-web", "strongroom-keyd", "strongroom-mail")
ARTIFACTS = REPO / "test-artifacts" / "system"
OUTSIDE_PORT = 443  # the probe's outside target port (sandbox_probe.py)

# One accept loop, dual-stack: prints the peer of every connection it gets.
_LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("LISTENING", flush=True)
while True:
    conn, peer = s.accept()
    print("ACCEPT", peer[0], flush=True)
    conn.close()
"""


class Listener:
    """A TCP listener on a client network of the test's (its own process, ended by its pid)."""

    def __init__(self, server: Server, role: str, port: int) -> None:
        ns = server.network.subnets[role].netns
        self.address = server.network.subnets[role].client_v4
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _LISTENER, str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert first.strip() == "LISTENING", first

    def accepted(self) -> list[str]:
        """Every peer so far (ends the listener: call once, at the end)."""
        out, _ = stop_process(self.proc)
        return [line.split()[1] for line in out.splitlines() if line.startswith("ACCEPT")]


def run_probe(c: Container, unit: str, outside: str) -> dict[str, object]:
    """Run the probe as `unit` (its sandbox, a oneshot command); its JSON line from the journal.

    The line is found by a token of this run in the whole journal after a cursor taken before the
    start, not by the unit's invocation id: a process that has already exited when journald reads
    its line (seen under load) leaves the line without the _SYSTEMD_* fields of its unit."""
    run = secrets.token_hex(8)
    dropin_dir = f"/run/systemd/system/{unit}.service.d"
    dropin = (
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=no\n"
        "Restart=no\n"
        "ExecReload=\n"
        "ExecStart=\n"
        f"ExecStart=/usr/bin/python3 -I {PROBE} {outside}\n"
        f"Environment=PROBE_NAME={unit}\n"
        f"Environment=PROBE_RUN={run}\n"
    )
    c.run(["systemctl", "stop", unit])
    c.run(f"mkdir -p {dropin_dir} && cat > {dropin_dir}/{DROPIN_NAME}", input=dropin)
    c.run(["systemctl", "daemon-reload"])
    c.run(["systemctl", "reset-failed", unit], check=False)
    last = c.run(["journalctl", "-n", "1", "--show-cursor", "-o", "cat"]).stdout
    cursor = re.search(r"^-- cursor: (\S+)$", last, re.M)
    assert cursor, "journalctl printed no cursor"
    started = c.run(["systemctl", "start", unit], check=False, timeout=60)
    deadline = time.monotonic() + 15
    while True:
        lines = c.run(["journalctl", "--no-pager", "-o", "cat", f"--after-cursor={cursor.group(1)}"],
                      check=False).stdout  # fmt: skip
        found = [json.loads(line) for line in re.findall(r"^SANDBOX-PROBE (\{.*\})$", lines, re.MULTILINE)]
        mine = [probe for probe in found if probe.get("run") == run]
        if mine:
            return dict(mine[-1])
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no probe output from {unit} (start: {started.returncode} {started.stderr}):\n"
                f"{c.journal(unit)[-3000:]}"
            )
        time.sleep(0.3)


def restore(c: Container, unit: str, custodian_shares: list[str]) -> None:
    c.run(["rm", "-f", f"/run/systemd/system/{unit}.service.d/{DROPIN_NAME}"])
    c.run(["systemctl", "daemon-reload"])
    c.run(["systemctl", "reset-failed", unit], check=False)
    if unit == "strongroom-keyd":
        operator.unseal(c, custodian_shares[1:])  # a restarted keyd is sealed: the runbook's unseal
    else:
        c.run(["systemctl", "restart", unit], timeout=120)


@pytest.fixture(scope="module")
def probes(unsealed: Server, custodian_shares: list[str]) -> Iterator[dict[str, dict[str, object]]]:
    c = unsealed.container
    c.run(["install", "-D", "-m", "0644", f"{SRC}/tests/system/sandbox_probe.py", PROBE])
    listener = Listener(unsealed, "admins", OUTSIDE_PORT)
    results: dict[str, dict[str, object]] = {}
    try:
        # Control: unconfined, root in the container reaches the listener (the firewall lets the
        # server connect out), so a probe's failure there is its sandbox's doing.
        connect = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()"
        control = c.run(["/usr/bin/python3", "-I", "-c", connect, listener.address, str(OUTSIDE_PORT)],
                        check=False)  # fmt: skip
        for unit in UNITS:
            try:
                results[unit] = run_probe(c, unit, listener.address)
            finally:
                restore(c, unit, custodian_shares)
    finally:
        peers = listener.accepted()
        c.run(["rm", "-rf", str(Path(PROBE).parent)], check=False)
    results["_control"] = {"returncode": control.returncode, "stderr": control.stderr[-500:]}
    # systemd applies IPAddressDeny= with BPF programs on the unified (v2) cgroup hierarchy only; on a
    # legacy (v1) one it silently runs the unit without them: the mailer test's failure names it.
    cgroupfs = c.run(["stat", "-fc", "%T", "/sys/fs/cgroup"]).stdout.strip()
    results["_cgroup"] = {"fs": cgroupfs, "unified": cgroupfs == "cgroup2fs"}
    results["_peers"] = {"accepted": peers}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "sandbox-probes.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    yield results
    for unit in UNITS:
        assert c.unit_state(unit) == "active", f"{unit} not restored: {c.journal(unit)[-2000:]}"
    assert operator.is_sealed(c) is False


def test_the_probe_ran_as_each_units_own_user(probes: dict[str, dict[str, object]]) -> None:
    for unit in UNITS:
        assert probes[unit]["probe"] == unit
        assert probes[unit]["uid"] != 0, unit


def test_the_outside_listener_is_reachable_without_a_sandbox(probes: dict[str, dict[str, object]]) -> None:
    assert probes["_control"]["returncode"] == 0, probes["_control"]
    assert len(probes["_peers"]["accepted"]) >= 1, probes["_peers"]  # type: ignore[arg-type]


def test_the_web_app_cannot_read_keyd_state_nor_write_the_system(
    probes: dict[str, dict[str, object]],
) -> None:
    web = probes["strongroom-web"]
    assert web["read_keyd_state"] != "ok", web
    assert web["read_keyd_events"] != "ok", web
    assert web["write_etc"] == "EROFS", web
    assert web["write_opt"] == "EROFS", web
    assert web["read_root_home"] != "ok", web
    assert web["tcp_socket"] == "EAFNOSUPPORT", web  # RestrictAddressFamilies=AF_UNIX
    assert web["tcp_outside"] != "ok", web


def test_keyd_cannot_open_a_tcp_socket(probes: dict[str, dict[str, object]]) -> None:
    keyd = probes["strongroom-keyd"]
    assert keyd["tcp_socket"] == "EAFNOSUPPORT", keyd
    assert keyd["tcp_loopback_smtp"] != "ok", keyd
    assert keyd["tcp_outside"] != "ok", keyd
    assert keyd["write_etc"] == "EROFS", keyd
    assert keyd["write_opt"] == "EROFS", keyd
    assert keyd["read_web_env"] != "ok", keyd
    assert keyd["read_root_home"] != "ok", keyd


def test_the_mailer_reaches_loopback_smtp_only(probes: dict[str, dict[str, object]]) -> None:
    mail = probes["strongroom-mail"]
    assert mail["tcp_socket"] == "ok", mail
    assert mail["tcp_loopback_smtp"] == "ok", mail
    # IPAddressDeny=any, IPAddressAllow=localhost (EPERM), or any other layer that stops it: the
    # outside listener's record (the control's one connection only) is the proof either way.
    assert mail["tcp_outside"] != "ok", (mail, probes["_cgroup"], probes["_peers"])
    # The control's one connection, and none from any probe.
    assert len(probes["_peers"]["accepted"]) == 1, probes["_peers"]  # type: ignore[arg-type]
    assert mail["read_keyd_state"] != "ok", mail
    assert mail["write_etc"] == "EROFS", mail
    assert mail["write_opt"] == "EROFS", mail


# -- systemd-analyze security, recorded for docs/deploy.md ---------------------------------------------

# The shipped units' ceilings (tests/deploy/test_units.py rates them offline: at most 1.0 for keyd and
# the web app, 1.5 for the mailer); on the installed server the same ceilings hold.
CEILINGS = {"strongroom-keyd": 1.0, "strongroom-web": 1.0, "strongroom-mail": 1.5}


def exposure(c: Container, unit: str) -> float:
    out = c.run(["systemd-analyze", "security", "--no-pager", f"{unit}.service"], check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert found is not None, out.stdout[-2000:] + out.stderr[-2000:]
    return float(found.group(1))


def test_exposure_scores_are_recorded(unsealed: Server) -> None:
    c = unsealed.container
    listed = c.run(["systemctl", "list-unit-files", "--no-legend", "--plain", "--type=service",
                    "strongroom*"]).stdout  # fmt: skip
    units = sorted({line.split()[0].removesuffix(".service") for line in listed.splitlines() if line.strip()})
    assert set(CEILINGS) <= set(units), units
    scores = {unit: exposure(c, unit) for unit in units if not unit.endswith("@")}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    record = {"date": date.today().isoformat(), "scores": scores}
    (ARTIFACTS / "exposure-scores.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    print("exposure scores:", json.dumps(scores, sort_keys=True))
    over = {u: s for u, s in scores.items() if u in CEILINGS and s > CEILINGS[u]}
    assert not over, f"above the ceilings {CEILINGS}: {over}"
