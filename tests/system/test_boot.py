"""The harness itself: the container boots real systemd, sees only the test's networks, the image is
cached, nothing outlives a run; and the install command, run twice, changes nothing the second time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.system import images
from tests.system.container import BOOT_TIMEOUT, STOP_TIMEOUT, Container, mounted, pid_alive, reap_stale_runs
from tests.system.network import NETNS_DIR, SUBNETS, Network
from tests.system.server import REPO, Server

INTERFACES = {"lo", *SUBNETS}

# Boots one container in a child process, says where everything is, then waits to be interrupted.
# Ctrl-C raises KeyboardInterrupt in it as at a terminal, even when the suite itself runs with SIGINT
# ignored (started as a background job, which inherits SIG_IGN down to this child).
CHILD = r"""
import json, signal, sys, time
from pathlib import Path
from tests.system.container import booted
signal.signal(signal.SIGINT, signal.default_int_handler)
with booted(Path(sys.argv[1])) as c:
    print(json.dumps({"run_dir": str(c.run_dir), "netns": c.network.namespaces(),
                      "pids": [c.pid1, c._nspawn.pid]}), flush=True)
    time.sleep(600)
"""


def test_systemd_is_pid_1_and_the_boot_is_clean(system: Server) -> None:
    c = system.container
    assert c.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert c.run(["readlink", "/proc/1/exe"]).stdout.strip() == "/usr/lib/systemd/systemd"
    assert c.run(["systemctl", "is-system-running"], check=False).stdout.strip() in {"running", "degraded"}
    assert c.failed_units == [], f"units failed at boot: {c.failed_units}"
    assert "bookworm" in c.read_file("/etc/os-release").decode()


def test_only_the_test_networks_are_visible(system: Server) -> None:
    c = system.container
    assert set(c.run(["ls", "/sys/class/net"]).stdout.split()) == INTERFACES
    links = json.loads(c.run(["ip", "-j", "link", "show"]).stdout)
    assert {link["ifname"] for link in links} == INTERFACES
    addrs = json.loads(c.run(["ip", "-j", "addr", "show", "scope", "global"]).stdout)
    found = {(a["ifname"], i["local"]) for a in addrs for i in a["addr_info"] if "local" in i}
    expected = {(s.ifname, ip) for s in system.network.subnets.values() for ip in (s.server_v4, s.server_v6)}
    assert found == expected
    assert c.run(["ip", "route", "show", "default"]).stdout.strip() == ""
    assert c.run(["ip", "-6", "route", "show", "default"]).stdout.strip() == ""


def test_the_admin_network_reaches_ssh_on_both_families(system: Server) -> None:
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 22), timeout=5).close()"
    for family in (4, 6):
        system.network.client_python("admins", probe, system.address("admins", family))


def test_the_image_and_wheels_are_reused_and_keyed_by_the_package_list(system_image: Path) -> None:
    started = time.monotonic()
    again, built = images.ensure_image()
    assert (again, built) == (system_image, False)
    assert time.monotonic() - started < 10
    assert images.ensure_wheelhouse()[1] is False
    packages = images.read_package_list()
    assert images.image_key(packages) == system_image.name
    assert images.image_key([*packages, "hello"]) != system_image.name


def _gone(run_dir: Path, netns: list[str], pids: list[int]) -> None:
    assert not run_dir.exists()
    assert not mounted(run_dir / "root")
    assert [ns for ns in netns if (NETNS_DIR / ns).exists()] == []
    assert [pid for pid in pids if pid_alive(pid)] == []


def test_close_leaves_no_namespace_mount_or_process(system_image: Path) -> None:
    net = Network().create()
    container = Container(system_image, net)
    try:
        container.start()
        pids = [container.pid1]
        assert container.overlay
        assert mounted(container.root)
    finally:
        container.close()
        net.teardown()
    _gone(container.run_dir, net.namespaces(), pids)


def _child() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(images.ensure_image()[0])],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"the child did not boot: {proc.communicate()[1][-3000:]}")
    return proc, json.loads(line)


# What Ctrl-C may take at worst (container.py): `systemctl poweroff` 15 s, the power-off STOP_TIMEOUT,
# the kills 2 x 10 s, then unmounting and deleting the copied tree, which on a loaded machine is slow.
CTRL_C_WORST = 15 + STOP_TIMEOUT + 20 + 120


@pytest.mark.timeout(BOOT_TIMEOUT + CTRL_C_WORST + 30)  # the boot, then the worst clean-up
def test_ctrl_c_cleans_up() -> None:
    proc, info = _child()
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=CTRL_C_WORST)
    finally:
        if proc.poll() is None:  # never leave the child (and its pipes) behind a failed wait
            proc.kill()
            proc.communicate()
    _gone(Path(info["run_dir"]), info["netns"], info["pids"])


def test_a_killed_run_is_reaped_by_the_next() -> None:
    proc, info = _child()
    proc.kill()
    proc.communicate(timeout=30)
    assert Path(info["run_dir"]).exists()  # SIGKILL: nothing could clean up
    assert Path(info["run_dir"]).name in reap_stale_runs()
    _gone(Path(info["run_dir"]), info["netns"], info["pids"])


def test_the_install_run_again_changes_nothing(server: Server) -> None:
    again = server.install()
    assert Server.changes(again) == [], again.stdout
    check = server.install("--check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_no_unit_failed_after_the_install(server: Server) -> None:
    failed = server.container.run(["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"]).stdout
    assert failed.strip() == ""


def test_roots_mail_reaches_both_admins_mailboxes(server: Server) -> None:
    c = server.container
    before = {login: len(c.mails(login)) for login in server.admins}
    subject = "harness check"
    c.run(["/usr/sbin/sendmail", "-t"], input=f"To: root\nSubject: {subject}\n\ncheck the server\n")
    for login, count in before.items():
        message, seconds = c.wait_for_mail(
            login, after=count, match=lambda m: m["Subject"] == subject, timeout=60
        )
        assert message.get_content().strip() == "check the server"
        assert seconds < 60
