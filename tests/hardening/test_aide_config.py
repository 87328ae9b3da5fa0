"""hardening/aide/aide.conf.in with the real aide: the configuration rendered for a private tree
(root_prefix), a database initialised on it, then one change per test and what `aide --check` says.

AIDE's exit code is a bitmask (1 added, 2 removed, 4 changed; 14 and above are its own errors), the
same contract the watchdog's integrity check relies on (ops/checks/integrity.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardening.aide import AideConfigError, render
from tests.support import need_binary

ADDED, REMOVED, CHANGED = 1, 2, 4

# A miniature server: system binaries, configs, the app, keyd's state, the CA, logs.
TREE: dict[str, tuple[str, int]] = {
    "usr/bin/tool": ("#!/bin/sh\necho tool\n", 0o755),
    "usr/local/lib/strongroom/ssh-session-hook": ("#!/usr/bin/python3 -I\n", 0o755),
    "etc/ssh/sshd_config": ("PermitRootLogin no\n", 0o644),
    "etc/ssh/authorized_keys/alice": ('environment="KEYHOLDER=alice" ssh-ed25519 AAAA\n', 0o644),
    "etc/strongroom/keyd.toml": ("state_dir = '/var/lib/strongroom-keyd'\n", 0o640),
    "etc/strongroom/webapp.toml": ("x = 1\n", 0o640),
    "etc/strongroom/ca-issuing.passphrase": ("correct horse\n", 0o600),
    "etc/resolv.conf": ("nameserver 192.0.2.53\n", 0o644),
    "opt/strongroom/webapp/app.py": ("def create_app(): ...\n", 0o644),
    "opt/strongroom/webapp/__pycache__/app.cpython-311.pyc": ("compiled\n", 0o644),
    "var/lib/strongroom-keyd/state.json": ('{"version": 1}\n', 0o600),
    "var/lib/strongroom-keyd/budgets.json": ('{"reserved": 10}\n', 0o600),
    "var/lib/strongroom/strongroom.db": ("sqlite\n", 0o600),
    "var/lib/strongroom-ca/index.json": ("[]\n", 0o600),
    "var/lib/strongroom-ca/publish/crl.pem": ("CRL 1\n", 0o644),
    "var/log/strongroom/access.log": ("GET / 200\n", 0o640),
    "var/log/syslog": ("boot\n", 0o640),
    "var/log/apache2/error.log": ("started\n", 0o640),
}


@dataclass
class Checked:
    tree: Path
    config: Path
    aide: str

    def check(self) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.aide, "--check", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            check=False,
        )
        assert proc.returncode < 14, proc.stderr  # AIDE's own errors: the test is broken, not the tree
        return proc


@pytest.fixture
def checked(tmp_path: Path) -> Checked:
    aide = need_binary("aide")
    tree = tmp_path / "tree"
    for rel, (content, mode) in TREE.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    (tree / "var/lib/strongroom-keyd").chmod(0o700)
    # Back-date everything: a change made in the same second as the init must still be a change
    # (AIDE stores times in whole seconds).
    past = time.time() - 3600
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (past, past))
    db = tmp_path / "db"
    db.mkdir()
    config = tmp_path / "aide.conf"
    config.write_text(render(database_dir=db, root_prefix=tree))
    subprocess.run([aide, "--config-check", "-c", str(config)], check=True, capture_output=True)
    init = subprocess.run(
        [aide, "--init", "--config", str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert init.returncode == 0, init.stdout + init.stderr
    (db / "aide.db.new.gz").rename(db / "aide.db.gz")
    result = Checked(tree, config, aide)
    first = result.check()
    assert first.returncode == 0, first.stdout  # nothing changed yet: silent
    return result


def _append(rel: str, text: str) -> Callable[[Path], None]:
    def change(tree: Path) -> None:
        with (tree / rel).open("a") as fh:
            fh.write(text)

    return change


def _write(rel: str, text: str) -> Callable[[Path], None]:
    def change(tree: Path) -> None:
        (tree / rel).write_text(text)

    return change


def _chmod(rel: str, mode: int) -> Callable[[Path], None]:
    return lambda tree: (tree / rel).chmod(mode)


def _remove(rel: str) -> Callable[[Path], None]:
    return lambda tree: (tree / rel).unlink()


def _rewrite_by_rename(rel: str, text: str) -> Callable[[Path], None]:
    """How keyd writes its JSON files: a temp file renamed over the old one (new inode)."""

    def change(tree: Path) -> None:
        tmp = tree / (rel + ".tmp")
        tmp.write_text(text)
        tmp.chmod((tree / rel).stat().st_mode & 0o777)
        os.replace(tmp, tree / rel)

    return change


def _chown(rel: str) -> Callable[[Path], None]:
    return lambda tree: os.chown(tree / rel, 65534, 65534)


# (name, change, expected exit bits, the path the report must name or None)
REPORTED = [
    ("binary added", _write("usr/bin/backdoor", "x"), ADDED, "/usr/bin/backdoor"),
    ("pyc planted", _write("opt/strongroom/webapp/__pycache__/evil.cpython-311.pyc", "x"), ADDED, "evil"),
    ("key added to keyd dir", _write("var/lib/strongroom-keyd/extra.json", "{}"), ADDED, "extra.json"),
    ("app code changed", _append("opt/strongroom/webapp/app.py", "import os\n"), CHANGED, "app.py"),
    ("sshd_config changed", _write("etc/ssh/sshd_config", "PermitRootLogin yes\n"), CHANGED, "sshd_config"),
    (
        "authorized key edited",
        _append("etc/ssh/authorized_keys/alice", "ssh-ed25519 BBBB\n"),
        CHANGED,
        "alice",
    ),
    (
        "hook changed",
        _append("usr/local/lib/strongroom/ssh-session-hook", "#\n"),
        CHANGED,
        "ssh-session-hook",
    ),
    ("config removed", _remove("etc/strongroom/webapp.toml"), REMOVED, "webapp.toml"),
    ("keyd state removed", _remove("var/lib/strongroom-keyd/state.json"), REMOVED, "state.json"),
    ("binary made setuid", _chmod("usr/bin/tool", 0o4755), CHANGED, "/usr/bin/tool"),
    ("keyd state readable", _chmod("var/lib/strongroom-keyd/state.json", 0o644), CHANGED, "state.json"),
    ("keyd dir opened", _chmod("var/lib/strongroom-keyd", 0o755), CHANGED, "strongroom-keyd"),
    (
        "passphrase edited",
        _write("etc/strongroom/ca-issuing.passphrase", "another one\n"),
        CHANGED,
        "passphrase",
    ),
    ("config owner changed", _chown("etc/strongroom/keyd.toml"), CHANGED, "keyd.toml"),
    ("log truncated", _write("var/log/strongroom/access.log", ""), CHANGED, "access.log"),
    ("log history edited", _write("var/log/syslog", "BOOT\n"), CHANGED, "/var/log/syslog"),
    ("log made world-readable", _chmod("var/log/apache2/error.log", 0o644), CHANGED, "error.log"),
]


@pytest.mark.parametrize(("name", "change", "bits", "path"), REPORTED, ids=[r[0] for r in REPORTED])
def test_change_is_reported(
    checked: Checked, name: str, change: Callable[[Path], None], bits: int, path: str
) -> None:
    change(checked.tree)
    proc = checked.check()
    assert proc.returncode == bits, proc.stdout
    assert path in proc.stdout


QUIET = [
    ("access log grows", _append("var/log/strongroom/access.log", "GET /x 200\n" * 50)),
    ("syslog grows", _append("var/log/syslog", "more\n")),
    ("apache log grows", _append("var/log/apache2/error.log", "[notice] x\n")),
    ("keyd rewrites its budgets", _rewrite_by_rename("var/lib/strongroom-keyd/budgets.json", '{"r": 20}\n')),
    ("keyd rewrites its state", _rewrite_by_rename("var/lib/strongroom-keyd/state.json", '{"version": 2}\n')),
    ("sqlite database written", _append("var/lib/strongroom/strongroom.db", "rows")),
    ("CRL republished", _rewrite_by_rename("var/lib/strongroom-ca/publish/crl.pem", "CRL 2\n")),
    ("resolver rewritten", _rewrite_by_rename("etc/resolv.conf", "nameserver 192.0.2.54\n")),
]


@pytest.mark.parametrize(("name", "change"), QUIET, ids=[q[0] for q in QUIET])
def test_expected_churn_is_not_reported(checked: Checked, name: str, change: Callable[[Path], None]) -> None:
    change(checked.tree)
    proc = checked.check()
    assert proc.returncode == 0, proc.stdout


def test_several_changes_add_up_in_the_exit_code(checked: Checked) -> None:
    _write("usr/bin/new", "x")(checked.tree)
    _remove("etc/strongroom/webapp.toml")(checked.tree)
    _chmod("usr/bin/tool", 0o777)(checked.tree)
    _append("var/log/syslog", "grows\n")(checked.tree)
    proc = checked.check()
    assert proc.returncode == ADDED | REMOVED | CHANGED
    assert "/var/log/syslog" not in proc.stdout


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_secrets_are_not_hashed_into_the_database(checked: Checked, tmp_path: Path) -> None:
    """The passphrase file is tracked by metadata only: its hash would allow an offline guess."""
    db = subprocess.run(
        ["zcat", str(tmp_path / "db" / "aide.db.gz")], capture_output=True, text=True, check=True
    ).stdout
    secret = TREE["etc/strongroom/ca-issuing.passphrase"][0].encode()
    tool = TREE["usr/bin/tool"][0].encode()
    assert _b64sha256(tool) in db  # control: ordinary files are hashed, in this encoding
    assert "/etc/strongroom/ca-issuing.passphrase " in db  # the secret file is tracked...
    assert _b64sha256(secret) not in db  # ...but not by its content


def test_shipped_config_passes_aide_config_check(tmp_path: Path) -> None:
    aide = need_binary("aide")
    config = tmp_path / "aide.conf"
    config.write_text(render())
    proc = subprocess.run(
        [aide, "--config-check", "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "kwargs",
    [
        {"database_dir": Path("relative")},
        {"database_dir": Path("/var/lib/aide\n/ Full")},
        {"root_prefix": Path("/tmp/a b")},
        {"root_prefix": Path("/tmp/../etc")},
        {"database_dir": Path("/")},
    ],
)
def test_hostile_render_values_are_refused(kwargs: dict[str, Path]) -> None:
    with pytest.raises(AideConfigError):
        render(**kwargs)
