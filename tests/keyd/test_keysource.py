"""The drop file: every hostile shape is refused with its own reason, by the code and by the daemon."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keyd.keysource import (
    MAX_DROP_SIZE,
    DropRefusal,
    DropRefused,
    consume_drop,
    open_drop,
    raw_key,
    stretch,
    strip_line,
)
from tests.keyd.conftest import NOBODY, Keyd, traversable_tmp, wait_for
from tests.keyd.conftest import raw_key as new_raw_key

KEY = b"ab" * 32 + b"\n"


def _file(path: Path, content: bytes = KEY, mode: int = 0o600, uid: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    os.chown(path, uid, -1)
    os.chmod(path, mode)


def _symlink(drop: Path) -> None:
    _file(drop.with_name("real"))
    drop.symlink_to(drop.with_name("real"))


def _dangling_symlink(drop: Path) -> None:
    drop.symlink_to(drop.with_name("nowhere"))


def _hard_link(drop: Path) -> None:
    _file(drop.with_name("other-name"))
    os.link(drop.with_name("other-name"), drop)


# One row per hostile drop file: (id, how to make it at the drop path, the refusal reason)
HOSTILE_DROPS: list[tuple[str, Callable[[Path], None], DropRefusal]] = [
    ("symlink", _symlink, DropRefusal.SYMLINK),
    ("dangling-symlink", _dangling_symlink, DropRefusal.SYMLINK),
    ("fifo", lambda p: os.mkfifo(p, 0o600), DropRefusal.NOT_REGULAR),
    ("directory", lambda p: p.mkdir(mode=0o700), DropRefusal.NOT_REGULAR),
    ("wrong-owner", lambda p: _file(p, uid=NOBODY), DropRefusal.WRONG_OWNER),
    ("world-readable", lambda p: _file(p, mode=0o644), DropRefusal.BAD_MODE),
    ("group-readable", lambda p: _file(p, mode=0o640), DropRefusal.BAD_MODE),
    ("executable", lambda p: _file(p, mode=0o700), DropRefusal.BAD_MODE),
    ("hard-link", _hard_link, DropRefusal.HARD_LINK),
    ("empty", lambda p: _file(p, content=b""), DropRefusal.EMPTY),
    ("huge", lambda p: _file(p, content=b"a" * (MAX_DROP_SIZE + 1)), DropRefusal.OVERSIZED),
]


def _consume(path: Path) -> bytearray | None:
    fd = open_drop(path)
    return None if fd is None else consume_drop(fd, path, allowed_uids=frozenset({0}))


@pytest.mark.parametrize(("name", "make", "reason"), HOSTILE_DROPS, ids=[h[0] for h in HOSTILE_DROPS])
def test_hostile_drop_is_refused(
    tmp_path: Path, name: str, make: Callable[[Path], None], reason: DropRefusal
) -> None:
    drop = tmp_path / "ekey"
    make(drop)
    with pytest.raises(DropRefused) as info:
        _consume(drop)
    assert info.value.reason is reason
    assert os.path.lexists(drop), "a refused file is left for the operator to inspect"


def test_good_drop_is_read_and_gone(tmp_path: Path) -> None:
    drop = tmp_path / "ekey"
    assert _consume(drop) is None  # nothing dropped yet
    _file(drop, mode=0o400)
    assert _consume(drop) == bytearray(KEY)
    assert not os.path.lexists(drop)


def test_deleted_too_early_is_refused(tmp_path: Path) -> None:
    """Someone else unlinked the file while keyd had it open: they may have a copy."""
    drop = tmp_path / "ekey"
    _file(drop)
    fd = open_drop(drop)
    assert fd is not None
    os.unlink(drop)
    with pytest.raises(DropRefused) as info:
        consume_drop(fd, drop, allowed_uids=frozenset({0}))
    assert info.value.reason is DropRefusal.DELETED_EARLY


def test_replaced_after_open_is_refused(tmp_path: Path) -> None:
    drop = tmp_path / "ekey"
    _file(drop)
    fd = open_drop(drop)
    assert fd is not None
    os.rename(drop, tmp_path / "moved")
    _file(drop)
    os.unlink(tmp_path / "moved")
    with pytest.raises(DropRefused) as info:
        consume_drop(fd, drop, allowed_uids=frozenset({0}))
    # The open file lost its last name (deleted early); the new one at the path is not what we read.
    assert info.value.reason in (DropRefusal.DELETED_EARLY, DropRefusal.REPLACED)


def test_not_deleted_is_refused() -> None:
    """keyd as an unprivileged user in a directory it cannot write: the secret would stay behind."""
    with traversable_tmp() as base:
        (base / "ro").mkdir(mode=0o755)
        drop = base / "ro" / "ekey"
        _file(drop, uid=NOBODY)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(read)
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                fd = open_drop(drop)
                assert fd is not None
                consume_drop(fd, drop, allowed_uids=frozenset({NOBODY}))
                result = "consumed"
            except DropRefused as exc:
                result = exc.reason.value
            except BaseException as exc:  # noqa: BLE001 - reported through the pipe
                result = repr(exc)
            os.write(write, result.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            result = f.read()
        os.waitpid(pid, 0)
        assert result == DropRefusal.NOT_DELETED.value
        assert drop.exists()


@pytest.mark.parametrize(
    ("typed", "kept"),
    [
        (b"abc\n", b"abc"),
        (b"abc\r\n", b"abc"),
        (b"abc", b"abc"),
        (b"abc\n\n", b"abc\n"),
        (b" abc \n", b" abc "),
    ],
)
def test_one_trailing_newline_is_stripped(typed: bytes, kept: bytes) -> None:
    assert strip_line(bytearray(typed)) == kept


def test_raw_key_and_passphrase() -> None:
    assert raw_key(bytearray(KEY)) == bytes.fromhex(KEY.decode().strip())
    for bad in (b"ab" * 31 + b"\n", b"zz" * 32, b"ab" * 33):
        with pytest.raises(ValueError, match=r"hex"):
            raw_key(bytearray(bad))
    one = stretch(bytearray(b"a long passphrase\n"), salt=b"s" * 16, n=2**14, r=8, p=1)
    two = stretch(bytearray(b"a long passphrase"), salt=b"s" * 16, n=2**14, r=8, p=1)
    assert one == two
    assert len(one) == 32
    assert stretch(bytearray(b"a long passphrase"), salt=b"t" * 16, n=2**14, r=8, p=1) != one


DAEMON_ROWS = [
    row
    for row in HOSTILE_DROPS
    if row[0] in {"symlink", "fifo", "wrong-owner", "world-readable", "empty", "huge"}
]


@pytest.mark.parametrize(("name", "make", "reason"), DAEMON_ROWS, ids=[h[0] for h in DAEMON_ROWS])
def test_daemon_refuses_hostile_drop_and_keeps_running(
    keyd_factory: object, name: str, make: Callable[[Path], None], reason: DropRefusal
) -> None:
    k: Keyd = keyd_factory()  # type: ignore[operator]
    key = new_raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    make(k.drop_path)

    def refused() -> bool:
        return any(e.get("reason") == reason.value for e in k.events() if e["event"] == "drop_file_refused")

    wait_for(refused, what=f"drop_file_refused {reason.value}")
    assert k.status()["sealed"] is True
    # Reported once, not at every poll.
    time.sleep(0.3)  # several poll intervals
    seen = sum(1 for e in k.events() if e.get("reason") == reason.value)
    assert seen == 1
    # The operator cleans up and drops the right key: keyd unseals.
    if k.drop_path.is_dir() and not k.drop_path.is_symlink():
        k.drop_path.rmdir()
    else:
        k.drop_path.unlink()
    k.unseal(key)


def test_unprivileged_daemon_reports_a_drop_file_it_cannot_delete(keyd_factory: object) -> None:
    """keyd as its own user (privileges dropped after binding) in a drop dir it cannot write."""
    k: Keyd = keyd_factory(extra=["--user", str(NOBODY)])  # type: ignore[operator]
    key = new_raw_key()
    k.drop(key, uid=NOBODY)  # init (as root) takes the drop from keyd's user too
    k.cli("init", "--wait", "10", "--key-kind", "raw")
    os.chmod(k.drop_dir, 0o755)  # noqa: S103 - root's, not writable by keyd's user
    k.start()
    assert os.stat(k.state_dir).st_uid == NOBODY
    assert os.stat(k.socket.parent).st_uid == NOBODY
    k.drop(key, uid=NOBODY)
    wait_for(lambda: "drop_file_not_deleted" in k.event_names(), what="drop_file_not_deleted")
    assert k.status()["sealed"] is True  # a secret it cannot remove is not used
    # With a drop dir it can clean up, the same user unseals.
    k.drop_path.unlink()
    os.chmod(k.drop_dir, 0o1777)  # noqa: S103 - sticky and world-writable, like /dev/shm
    k.drop(key, uid=NOBODY)
    wait_for(lambda: not k.status()["sealed"], what="unseal as keyd's own user")
