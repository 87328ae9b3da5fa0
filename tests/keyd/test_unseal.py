"""`keyd unseal` and `keyd status` exit codes, against a real `keyd serve` and its real drop-file poller."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keyd.config import load
from keyd.unseal import UnsealError, place, temp_path
from tests.keyd.conftest import (
    GENEROUS,
    NOBODY,
    ROOT,
    SO_PIN,
    USER_PIN,
    Keyd,
    raw_key,
    wait_for,
)
from tests.support import need_binary

UNSEALED, FAILED, USAGE, SEALED, UNREACHABLE = 0, 1, 2, 3, 4
PROMPT = b"(not shown): "
PASSPHRASE = b"correct horse battery staple unseal"


def _unseal(k: Keyd, secret: bytes | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`keyd unseal --stdin` fed from a pipe (what the whole-server test does)."""
    return subprocess.run(
        [sys.executable, "-m", "keyd", "unseal", *k.flags(), *args],
        cwd=ROOT,
        env=k.env,
        input=(secret or b"").decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _at_terminal(k: Keyd, typed: bytes | None, *args: str) -> tuple[int, bytes]:
    """Run `keyd unseal` on a pseudo-terminal; type `typed` once the prompt shows. Returns (exit, screen)."""
    pid, master = pty.fork()
    if pid == 0:  # the child: its stdin/stdout/stderr and /dev/tty are the terminal
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "keyd", "unseal", *k.flags(), *args], k.env)  # noqa: S606 - a fixed argv, no shell
        finally:
            os._exit(127)
    screen = bytearray()
    deadline = time.monotonic() + 60
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"unseal hung; the terminal showed {bytes(screen)!r}")
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
            if typed is not None and PROMPT in screen:
                os.write(master, typed)  # the prompt is printed after echo is switched off
                typed = None
    finally:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        _, wait_status = os.waitpid(pid, 0)
        os.close(master)
    return os.waitstatus_to_exitcode(wait_status), bytes(screen)


def _leftovers(k: Keyd) -> list[str]:
    return sorted(p.name for p in k.drop_dir.iterdir())


def _started(k: Keyd, secret: bytes, *init_args: str) -> Keyd:
    k.init(secret, *init_args)
    k.start()
    return k


# --- status exit codes ----------------------------------------------------------------------------


def test_status_exit_codes(keyd_factory: Callable[..., Keyd]) -> None:
    """0 unsealed, 3 sealed, 4 unreachable; the printed lines stay what scripts parse."""
    k = keyd_factory()
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    down = k.cli("status", check=False)
    assert (down.returncode, down.stdout) == (UNREACHABLE, "")
    assert "unavailable" in down.stderr
    k.start()
    sealed = k.cli("status", check=False)
    assert sealed.returncode == SEALED
    assert sealed.stdout.splitlines() == [
        "sealed: true",
        "mode: file",
        "key_version: 1",
        "min_decrypt_version: 1",
    ]
    assert k.cli("versions", check=False).returncode == 0  # only status reports the state by its code
    k.unseal(key)
    unsealed = k.cli("status", check=False)
    assert unsealed.returncode == UNSEALED
    assert unsealed.stdout.splitlines()[0] == "sealed: false"
    seal = k.cli("seal", check=False)
    assert (seal.returncode, seal.stdout.splitlines()[0]) == (0, "sealed: true")  # the seal was done
    assert k.cli("status", check=False).returncode == SEALED
    k.stop()
    assert k.cli("status", check=False).returncode == UNREACHABLE


# --- the prompt -----------------------------------------------------------------------------------


@pytest.mark.parametrize("as_user", [None, str(NOBODY)], ids=["keyd-as-root", "keyd-as-its-own-user"])
def test_unseal_at_a_terminal_never_shows_the_secret(
    keyd_factory: Callable[..., Keyd], as_user: str | None
) -> None:
    k = keyd_factory(extra=["--user", as_user] if as_user else [])
    _started(k, PASSPHRASE + b"\n", "--key-kind", "passphrase", "--scrypt-n", "16384")
    code, screen = _at_terminal(k, PASSPHRASE + b"\n")
    assert code == UNSEALED, screen
    assert PROMPT in screen
    assert b"passphrase or raw key" in screen
    assert PASSPHRASE not in screen
    assert b"correct horse" not in screen  # not even a part of it was echoed
    assert b"sealed: false" in screen
    assert k.status()["sealed"] is False
    assert _leftovers(k) == []
    # keyd's own log and event spool never saw it either.
    assert PASSPHRASE.decode() not in k.log_text()
    assert PASSPHRASE.decode() not in (k.state_dir / "events.jsonl").read_text()
    # Already unsealed: nothing is asked, exit 0.
    again, screen = _at_terminal(k, None)
    assert again == UNSEALED
    assert PROMPT not in screen
    assert b"already unsealed" in screen


def test_wrong_secret_at_the_terminal_stays_sealed(keyd_factory: Callable[..., Keyd]) -> None:
    k = _started(keyd_factory(), raw_key(), "--key-kind", "raw")
    wrong = raw_key()
    code, screen = _at_terminal(k, wrong)
    assert code == SEALED, screen
    assert wrong.strip() not in screen
    assert b"sealed: true" in screen
    assert b"wrong_key" in screen
    assert "wrong_key" in k.event_names()
    assert _leftovers(k) == []


# --- --stdin (scripts) ----------------------------------------------------------------------------


def test_unseal_from_a_pipe(keyd_factory: Callable[..., Keyd]) -> None:
    key = raw_key()
    k = _started(keyd_factory(), key, "--key-kind", "raw")
    wrong = raw_key()
    refused = _unseal(k, wrong, "--stdin")
    assert refused.returncode == SEALED
    assert refused.stdout.splitlines()[0] == "sealed: true"
    assert "wrong_key" in k.event_names()
    done = _unseal(k, key, "--stdin")
    assert done.returncode == UNSEALED, done.stderr
    assert done.stdout.splitlines()[0] == "sealed: false"
    events = (k.state_dir / "events.jsonl").read_text()
    for secret in (key, wrong):
        hexkey = secret.strip().decode()
        assert hexkey not in refused.stdout + refused.stderr + done.stdout + done.stderr
        assert hexkey not in events
        assert hexkey not in k.log_text()
    assert _leftovers(k) == []


def test_a_pipe_needs_the_flag_and_a_terminal_refuses_it(keyd_factory: Callable[..., Keyd]) -> None:
    k = _started(keyd_factory(), raw_key(), "--key-kind", "raw")
    piped = _unseal(k, raw_key())
    assert piped.returncode == USAGE
    assert "--stdin" in piped.stderr
    code, screen = _at_terminal(k, None, "--stdin")
    assert code == USAGE
    assert b"--stdin reads a pipe" in screen
    assert k.status()["sealed"] is True
    assert _leftovers(k) == []


def test_unseal_a_pkcs11_token_with_its_pin(
    keyd_factory: Callable[..., Keyd], softhsm: dict[str, str]
) -> None:
    util = need_binary("softhsm2-util")
    label = "keyd-unseal"
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", USER_PIN],
        env=softhsm,
        check=True,
        capture_output=True,
    )
    k = keyd_factory(mode="pkcs11", env=softhsm, extra=[*GENEROUS, "--token-label", label])
    _started(k, USER_PIN.encode() + b"\n")
    wrong = _unseal(k, b"not-the-pin-0000\n", "--stdin")
    assert wrong.returncode == SEALED
    assert "wrong_key" in k.event_names()
    code, screen = _at_terminal(k, USER_PIN.encode() + b"\n")
    assert code == UNSEALED, screen
    assert b"token PIN" in screen
    assert USER_PIN.encode() not in screen
    assert k.status()["sealed"] is False


# --- unreachable, hostile states, keyd not taking the file ------------------------------------------


def test_unreachable_keyd_asks_nothing(keyd_factory: Callable[..., Keyd]) -> None:
    k = keyd_factory()
    k.init(raw_key(), "--key-kind", "raw")
    result = _unseal(k, raw_key(), "--stdin")
    assert result.returncode == UNREACHABLE
    assert "unreachable" in result.stderr
    code, screen = _at_terminal(k, None)
    assert code == UNREACHABLE
    assert PROMPT not in screen
    assert _leftovers(k) == []


def _plant_file(k: Keyd, path: Path) -> None:
    path.write_bytes(b"someone else's\n")
    os.chown(path, NOBODY, NOBODY)


def _plant_link(k: Keyd, path: Path) -> None:
    path.symlink_to(k.base / "target")


HOSTILE = [
    ("file-at-drop-path", lambda k: _plant_file(k, k.drop_path), "ekey"),
    ("link-at-drop-path", lambda k: _plant_link(k, k.drop_path), "ekey"),
    ("file-at-temp-name", lambda k: _plant_file(k, k.drop_dir / "ekey-tmp"), "ekey-tmp"),
    ("link-at-temp-name", lambda k: _plant_link(k, k.drop_dir / "ekey-tmp"), "ekey-tmp"),
]


@pytest.mark.parametrize(("plant", "left"), [(p, n) for _, p, n in HOSTILE], ids=[i for i, _, _ in HOSTILE])
def test_something_already_in_the_way_is_left_alone(
    keyd_factory: Callable[..., Keyd], plant: Callable[[Keyd], None], left: str
) -> None:
    key = raw_key()
    k = _started(keyd_factory(), key, "--key-kind", "raw")
    target = k.base / "target"
    target.write_bytes(b"untouched\n")
    plant(k)
    result = _unseal(k, key, "--stdin")
    assert result.returncode == FAILED
    assert "already exists" in result.stderr
    assert "Nothing was written" in result.stderr
    assert target.read_bytes() == b"untouched\n"  # a link is never followed
    assert _leftovers(k) == [left]  # the planted thing stays for the operator to investigate
    assert k.status()["sealed"] is True


def test_a_link_planted_between_the_check_and_the_write_is_not_followed(tmp_path: Path) -> None:
    """place() itself opens with O_CREAT|O_EXCL|O_NOFOLLOW: a link that appears after check_clear fails it."""
    drop_dir = tmp_path / "shm"
    drop_dir.mkdir()
    config = load(None, {"drop_path": drop_dir / "ekey"})
    target = tmp_path / "target"
    target.write_bytes(b"untouched\n")
    temp_path(config).symlink_to(target)
    secret = bytearray(b"a secret that must go nowhere\n")
    with pytest.raises(UnsealError, match="appeared meanwhile"):
        place(secret, config, (os.geteuid(), os.getegid()))
    assert target.read_bytes() == b"untouched\n"
    assert sorted(p.name for p in drop_dir.iterdir()) == ["ekey-tmp"]


def test_a_file_keyd_does_not_take_is_removed_again(keyd_factory: Callable[..., Keyd]) -> None:
    """keyd watches another path (a wrong config, or keyd stuck): the secret must not stay on tmpfs."""
    key = raw_key()
    k = _started(keyd_factory(), key, "--key-kind", "raw")
    elsewhere = k.drop_dir / "not-watched"
    result = _unseal(k, key, "--stdin", "--wait", "1", "--drop-path", str(elsewhere))
    assert result.returncode == FAILED
    assert "did not take" in result.stderr
    assert "removed it again" in result.stderr
    assert _leftovers(k) == []
    assert k.status()["sealed"] is True
    assert key.strip().decode() not in result.stderr + result.stdout


def test_the_drop_file_is_what_keyd_requires(keyd_factory: Callable[..., Keyd]) -> None:
    """Owner keyd's user (root runs unseal, keyd runs as its own user), 0600, one link, regular file.

    Dropped at a path keyd does not watch, so it sits there long enough to be looked at.
    """
    key = raw_key()
    k = _started(keyd_factory(extra=["--user", str(NOBODY)]), key, "--key-kind", "raw")
    elsewhere = k.drop_dir / "not-watched"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keyd",
            "unseal",
            *k.flags(),
            "--stdin",
            "--wait",
            "5",
            "--drop-path",
            str(elsewhere),
        ],
        cwd=ROOT,
        env=k.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(key)
    proc.stdin.close()
    wait_for(elsewhere.exists, timeout=20, what="the drop file")
    st = os.lstat(elsewhere)
    assert (st.st_uid, oct(st.st_mode), st.st_nlink, st.st_size) == (NOBODY, "0o100600", 1, len(key))
    assert proc.wait(timeout=30) == FAILED
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()
    assert b"removed it again" in err
    assert _leftovers(k) == []
