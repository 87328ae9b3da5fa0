"""Fixtures for keyd: a real `python -m keyd serve` subprocess, real drop files, a real SoftHSM2 token."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keyd.client import KeydClient
from tests.support import component_missing, need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN = "9876543210"
USER_PIN = "test-user-pin-1234"
NOBODY = 65534
GENEROUS = [f"--budget={s}.{w}=1000000" for s in ("employee", "global") for w in ("minute", "hour", "day")]


def wait_for(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Keyd:
    """One keyd instance's paths and process. `start()` runs a real daemon subprocess."""

    base: Path
    mode: str = "file"
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    # An installed copy's python (tests.support.install_for_others), for a keyd given --user.
    python_for_others: Path | None = None

    @property
    def socket(self) -> Path:
        return self.base / "run" / "keyd.sock"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def drop_dir(self) -> Path:
        return self.base / "shm"

    @property
    def drop_path(self) -> Path:
        return self.drop_dir / "ekey"

    @property
    def log_path(self) -> Path:
        return self.base / "keyd.log"

    def flags(self) -> list[str]:
        return [
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state_dir),
            "--drop-path",
            str(self.drop_path),
            "--allow-uid",
            "0",
            "--mode",
            self.mode,
            "--pkcs11-module",
            SOFTHSM_MODULE,
            "--token-label",
            "keyd-test",
            "--poll-interval",
            "0.05",
            "--no-syslog",
            *self.extra,
        ]

    def _python(self) -> tuple[str, Path]:
        """The python that runs keyd, and its working directory.

        keyd --user drops to that uid after binding and then still imports (pkcs11 lazily): as that
        uid it could not read a checkout in a 0700 directory, so it runs from the installed copy."""
        if "--user" not in self.extra:
            return sys.executable, ROOT
        assert self.python_for_others is not None, "keyd --user runs from keyd_factory's installed copy"
        return str(self.python_for_others), self.base

    def cli(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`python -m keyd ARGS` with this daemon's flags; `input` on its stdin (a secret, as a script
        pipes one to `--stdin`)."""
        python, cwd = self._python()
        return subprocess.run(
            [python, "-m", "keyd", *args, *self.flags()],
            cwd=cwd,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def drop(self, content: bytes, *, mode: int = 0o600, uid: int = 0) -> None:
        """What the operator does: write a temp file, then rename it onto the drop path."""
        tmp = self.drop_dir / "ekey-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, content)
        os.close(fd)
        os.chown(tmp, uid, -1)
        os.chmod(tmp, mode)
        os.rename(tmp, self.drop_path)

    def init(self, secret: bytes, *args: str) -> subprocess.CompletedProcess[str]:
        self.drop(secret)
        return self.cli("init", "--wait", "10", *args)

    def start(self) -> None:
        assert self.proc is None
        self.log = self.log_path.open("ab")
        python, cwd = self._python()
        self.proc = subprocess.Popen(
            [python, "-m", "keyd", "serve", *self.flags()],
            cwd=cwd,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, what="keyd socket")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"keyd exited with {self.proc.returncode}:\n{self.log_text()}")
        if not self.socket.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(self.socket))
        except OSError:
            return False
        return True

    def client(self, timeout: float = 5.0) -> KeydClient:
        return KeydClient(self.socket, timeout=timeout)

    def status(self) -> dict[str, object]:
        with self.client() as c:
            s = c.status()
        return {"sealed": s.sealed, "key_version": s.key_version, "min": s.min_decrypt_version}

    def unseal(self, secret: bytes) -> None:
        self.drop(secret)
        wait_for(lambda: not self.status()["sealed"], what="unseal")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=10)
        finally:
            self.proc = None
            self.log.close()
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def events(self) -> list[dict[str, object]]:
        path = self.state_dir / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def event_names(self) -> list[object]:
        return [e["event"] for e in self.events()]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def raw_key() -> bytes:
    return secrets.token_hex(32).encode() + b"\n"


def make_keyd(base: Path, **kwargs: object) -> Keyd:
    base.mkdir(parents=True, exist_ok=True)
    k = Keyd(base=base, **kwargs)  # type: ignore[arg-type]
    k.drop_dir.mkdir()
    os.chmod(k.drop_dir, 0o1777)  # noqa: S103 - a sticky world-writable dir, like /dev/shm
    return k


@contextlib.contextmanager
def traversable_tmp() -> Iterator[Path]:
    # pytest's tmp dirs are 0700: a setuid child acting as another user could not even reach the
    # socket, and the test would prove nothing about keyd's own checks.
    base = Path(tempfile.mkdtemp(prefix="keyd-test-"))
    os.chmod(base, 0o711)  # noqa: S103 - traversable, not listable
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def keyd_factory(python_for_others: Path) -> Iterator[object]:
    """Build (and always clean up) keyd instances for one test."""
    need_root()
    made: list[Keyd] = []
    with traversable_tmp() as tmp:

        def factory(name: str = "k", **kwargs: object) -> Keyd:
            k = make_keyd(tmp / name, python_for_others=python_for_others, **kwargs)
            made.append(k)
            return k

        yield factory
        for k in made:
            if k.proc is not None:
                k.kill()


@dataclass
class Running:
    keyd: Keyd
    key: bytes


@contextlib.contextmanager
def unsealed_keyd() -> Iterator[Running]:
    """A real file-mode keyd, unsealed through its drop file, with budgets out of the way."""
    need_root()
    with traversable_tmp() as tmp:
        k = make_keyd(tmp / "k", extra=GENEROUS)
        key = raw_key()
        k.init(key, "--key-kind", "raw")
        k.start()
        k.unseal(key)
        yield Running(k, key)
        if k.proc is not None:
            k.kill()


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    """One unsealed file-mode keyd shared by a module's read-mostly tests."""
    with unsealed_keyd() as r:
        yield r


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh SoftHSM2 token in a private token dir; the env that points at it."""
    util = need_binary("softhsm2-util")
    if not Path(SOFTHSM_MODULE).exists():
        component_missing(f"{SOFTHSM_MODULE} is missing (apt-get install softhsm2)")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run(
        [util, "--init-token", "--free", "--label", "keyd-test", "--so-pin", SO_PIN, "--pin", USER_PIN],
        env=env,
        check=True,
        capture_output=True,
    )
    return env


def copy_state(src: Keyd, dst: Keyd) -> None:
    shutil.copytree(src.state_dir, dst.state_dir)
