"""An admin becomes root after an SSH login: key for sshd (no root login, no password), then sudo with
the admin's own password (settings `password_hash`). The runbook's root commands, keyd unseal after a
restart first, need no console."""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
from pathlib import Path

from tests.system import operator
from tests.system.operator import KEYD_CONFIG, OPT
from tests.system.server import Admin, Server


def ssh(
    server: Server, admin: Admin, known_hosts: Path, command: str, stdin: str
) -> subprocess.CompletedProcess[str]:
    """`command` as `admin` over SSH from the admins' network, with the admin's KEYHOLDER key."""
    return server.network.client("admins", [
        "ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=10", "-i", str(admin.private_key),
        f"{admin.login}@{server.address('admins')}", command,
    ], check=False, timeout=90, input=stdin)  # fmt: skip


def test_an_admin_becomes_root_with_sudo_and_her_own_password(server: Server, tmp_path: Path) -> None:
    alice = server.admins["alice"]
    done = ssh(server, alice, tmp_path / "known_hosts", "sudo -S -p '' id -u", alice.password + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_sudo_refuses_a_wrong_password(server: Server, tmp_path: Path) -> None:
    alice = server.admins["alice"]
    wrong = secrets.token_urlsafe(18)
    done = ssh(server, alice, tmp_path / "known_hosts", "sudo -S -p '' id -u", (wrong + "\n") * 3)
    assert done.returncode != 0
    assert done.stdout.strip() == ""
    # Never NOPASSWD: with no password at all, sudo refuses too.
    done = ssh(server, alice, tmp_path / "known_hosts", "sudo -n id -u", "")
    assert done.returncode != 0
    assert done.stdout.strip() == ""


def test_the_sudoers_file_is_the_installers_and_valid(server: Server) -> None:
    c = server.container
    path = "/etc/sudoers.d/strongroom-admins"
    assert c.run(["stat", "-c", "%U:%G %a", path]).stdout.strip() == "root:root 440"
    assert "NOPASSWD" not in c.read_file(path).decode()
    assert c.run(["visudo", "-c"], check=False).returncode == 0
    # The shadow entry holds the settings' hash, not '*' (key-only, no sudo) nor a locked '!'.
    shadow = c.run(["getent", "shadow", "alice"]).stdout.split(":")
    assert shadow[1] == server.admins["alice"].password_hash


def test_two_admins_unseal_keyd_over_ssh_each_with_their_share(
    unsealed: Server, custodian_shares: list[str], tmp_path: Path
) -> None:
    """keyd restarted (sealed); alice and bob, custodians of shares 1 and 2, each log in over SSH and
    run the runbook's unseal with sudo: sudo reads the admin's password line from stdin, then
    `keyd unseal --stdin` their share's line. keyd records who delivered which share."""
    c = unsealed.container
    c.run(["systemctl", "restart", "strongroom-keyd"])
    operator.start_keyd(c)  # waits until keyd answers
    assert operator.is_sealed(c) is True
    unseal = f"cd {OPT} && sudo -S -p '' .venv/bin/python -m keyd unseal --config {KEYD_CONFIG} --stdin"
    for turn, (login, share) in enumerate((("alice", custodian_shares[0]), ("bob", custodian_shares[1])), 1):
        admin = unsealed.admins[login]
        done = ssh(unsealed, admin, tmp_path / "known_hosts", f"sh -c {shlex.quote(unseal)}",
                   f"{admin.password}\n{share}\n")  # fmt: skip
        if done.returncode == 4:
            # keyd unreachable (seen once, cause not found: keyd's journal is in the failure below if
            # it happens twice). The runbook's answer is the same: wait until keyd answers, unseal again.
            operator.start_keyd(c)
            done = ssh(unsealed, admin, tmp_path / "known_hosts", f"sh -c {shlex.quote(unseal)}",
                       f"{admin.password}\n{share}\n")  # fmt: skip
        # keyd's own record says why, if it was not reachable (the output is the unseal command's).
        assert done.returncode == 0, done.stdout + done.stderr + c.journal("strongroom-keyd")[-3000:]
        assert share not in done.stdout + done.stderr
        assert admin.password not in done.stdout + done.stderr
        if turn == 1:
            assert f"share 1 accepted: 1 of {operator.THRESHOLD} shares received" in done.stderr, done.stderr
    assert "sealed: false" in done.stdout.splitlines(), done.stdout
    operator.wait_unsealed(c)  # and it stays unsealed for what runs next
    spool = c.read_file("/var/lib/strongroom-keyd/events.jsonl").decode().splitlines()
    delivered = [json.loads(line) for line in spool if '"share_delivered"' in line][-2:]
    assert [(e["index"], e["login"]) for e in delivered] == [(1, "alice"), (2, "bob")], delivered
