"""Helpers shared by the whole suite.

In CI (``CI=true``) a missing component is a failure, never a skip: `need_binary` and
`component_missing` fail there and only skip on a developer's machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import venv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from webapp.redact import HEX_TOKEN

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROOT = Path(__file__).resolve().parent.parent
# The project's own packages: what a copy for another user must hold besides the venv's libraries.
PACKAGES = tuple(sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"))


def component_missing(reason: str) -> None:
    """Stop the test because a real component is unavailable: fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"component missing in CI: {reason}")
    pytest.skip(reason)  # CI never gets here: see the fail above


def need_binary(name: str) -> str:
    """The full path of a system binary the test needs (see scripts/debian-packages.txt)."""
    for prefix in ("", "/usr/sbin/", "/sbin/"):
        path = shutil.which(prefix + name) if not prefix else (prefix + name)
        if path and os.access(path, os.X_OK):
            return path
    component_missing(f"{name} is not installed (make test installs it when run as root)")
    raise AssertionError("unreachable")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server a test starts (the server
    binds it again; a port taken in between makes that start fail loudly, never pass wrongly)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], grace: float = 10) -> tuple[Any, Any]:
    """Stop a process a test started: SIGTERM, then SIGKILL if it is still there after `grace`
    seconds (an ssh client was once seen lingering on its way out under load). Returns what it wrote
    to its pipes; they are drained and closed either way, so no pipe is left for the garbage collector
    to report in some later test."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=grace)


_HEX_TOKEN = re.compile(rf"[0-9a-fA-F]{{{HEX_TOKEN},}}")  # what webapp.redact calls a hex token


def without_hex_ids(text: str) -> str:
    """`text` with every run of 32+ hex digits (our card and item ids, hashes, fingerprints, serials)
    replaced by "<hex>": random hex holds any four digits now and then (a card id once held "4111"),
    so a test that looks for a fragment of a card number looks in what is left. webapp.redact
    leaves the same tokens (HEX_TOKEN) alone when it masks."""
    return _HEX_TOKEN.sub("<hex>", text)


def need_root() -> None:
    if os.geteuid() != 0:
        component_missing("this test needs root (namespaces, setuid peers, private daemons)")


def install_for_others(dest: Path) -> Path:
    """Install the project and its venv's libraries under `dest` (a fresh venv every user can read and
    traverse) and return that venv's python.

    The checkout may live where no other user can enter (root's home, a 0700 `mktemp -d`; see README):
    code a test runs as another uid (setpriv, setuid children) must come from a copy like this, never
    from the checkout or its .venv, or it fails to import before it proves anything. Files are hard
    links where the checkout's own modes already let others read them, copies made readable otherwise
    (a clone made under umask 077); nothing in the checkout itself is ever chmod-ed."""
    venv.EnvBuilder(symlinks=True, with_pip=False).create(dest)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(dest), "platbase": str(dest)}))
    ours = Path(sysconfig.get_path("purelib"))
    shutil.copytree(ours, site, copy_function=_readable_copy, dirs_exist_ok=True)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, site / name, copy_function=_readable_copy)
    # What venv and copytree made follow the caller's umask (077 in some shells): open it up.
    for top, dirs, files in os.walk(dest):
        for d in dirs:
            path = Path(top, d)
            if not path.is_symlink():
                path.chmod(0o755)
        for f in files:
            path = Path(top, f)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) and not mode & stat.S_IROTH:  # never a hard link: those are readable
                path.chmod(stat.S_IMODE(mode) | 0o444)
    dest.chmod(0o755)
    python = dest / "bin" / "python"
    assert python.exists(), f"no python in the copy at {dest} (made from {sys.executable})"
    return python


def _readable_copy(src: str, dst: str) -> None:
    mode = os.stat(src).st_mode
    if mode & stat.S_IROTH:
        try:
            os.link(src, dst)  # same modes, no bytes copied: a few thousand files in a blink
            return
        except OSError:
            pass  # another filesystem: copy instead
    shutil.copy2(src, dst)
    executable = 0o111 if mode & stat.S_IXUSR else 0
    os.chmod(dst, 0o644 | executable)


class LogMark:
    """What a log file gained since the mark. Apache writes access lines after the response has
    gone out, so `wait_for` polls briefly."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.new()
            if predicate(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.05)


def made_up_pan(prefix: str = "4", length: int = 16) -> str:
    """A random number with a right check digit: no real card's, yet every detector's business."""
    from webapp.redact import luhn_ok  # the web app's own check: what it accepts, this makes

    body = prefix + "".join(secrets.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def record_timing(file: Path, name: str, seconds: float) -> None:
    """Print a measured duration and keep it in `file` (JSON, name -> seconds) for the docs; several
    test processes may write the same file."""
    print(f"timing {name}: {seconds:.1f} s")
    file.parent.mkdir(parents=True, exist_ok=True)
    with _locked(file.with_suffix(".lock")):
        try:
            timings = json.loads(file.read_text())
        except (OSError, ValueError):
            timings = {}
        timings[name] = round(seconds, 1)
        file.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
