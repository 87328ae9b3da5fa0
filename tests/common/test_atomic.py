"""common/atomic.py: the one atomic file write every package uses."""

from __future__ import annotations

import array
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import atomic
from tests.support import need_root


def _leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if atomic.is_temp(n))


# (mode asked for, umask in force): the file gets exactly the mode, whatever the umask.
MODES = [
    (0o600, 0o077),
    (0o600, 0o000),
    (0o640, 0o022),
    (0o644, 0o077),
    (0o400, 0o022),
    (0o755, 0o027),
]


@pytest.mark.parametrize(("mode", "umask"), MODES, ids=[f"{m:04o}-umask{u:03o}" for m, u in MODES])
def test_the_file_has_exactly_the_mode_from_the_start(tmp_path: Path, mode: int, umask: int) -> None:
    target = tmp_path / "f"
    seen: list[int] = []

    def check(tmp: Path) -> None:
        # Still under the temporary name: the mode is already the final one.
        seen.append(stat.S_IMODE(tmp.lstat().st_mode))
        assert tmp.parent == tmp_path
        assert atomic.is_temp(tmp.name)

    old = os.umask(umask)
    try:
        atomic.write_bytes(target, b"data", mode=mode, check=check)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.lstat().st_mode) == mode
    assert seen == [mode]
    assert target.read_bytes() == b"data"
    assert _leftovers(tmp_path) == []


def test_owner_is_set_before_the_file_appears(tmp_path: Path) -> None:
    need_root()  # only root can give a file away
    target = tmp_path / "f"
    owners: list[tuple[int, int]] = []
    atomic.write_bytes(
        target,
        b"x",
        mode=0o600,
        owner=(65534, 65534),
        check=lambda tmp: owners.append((tmp.lstat().st_uid, tmp.lstat().st_gid)),
    )
    st = target.lstat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert owners == [(65534, 65534)]
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_replaces_an_existing_file_with_a_new_one(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content, longer than the new")
    target.chmod(0o666)
    before = target.lstat().st_ino
    atomic.write_bytes(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    after = target.lstat()
    assert stat.S_IMODE(after.st_mode) == 0o600  # the old mode is not inherited
    assert after.st_ino != before  # a new file: a reader holding the old one keeps the old content


def test_a_symlink_at_the_target_is_replaced_and_what_it_pointed_to_is_untouched(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not yours")
    target = tmp_path / "f"
    target.symlink_to(elsewhere)
    atomic.write_bytes(target, b"mine", mode=0o600)
    assert not target.is_symlink()
    assert target.read_bytes() == b"mine"
    assert elsewhere.read_bytes() == b"not yours"


def test_a_planted_temporary_name_is_refused_and_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name is random; fix it so the test can plant a symbolic link where the temp file goes.
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "0" * (2 * n))
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    target = tmp_path / "f"
    target.write_bytes(b"old")
    planted = tmp_path / f".f.{'0' * 16}.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        atomic.write_bytes(target, b"new", mode=0o600)
    assert victim.read_bytes() == b"victim"
    assert target.read_bytes() == b"old"
    assert planted.is_symlink()  # not ours: left as found


class Boom(Exception):
    pass


def _check_fails(tmp: Path) -> None:
    raise Boom


def _chunks_fail() -> Iterator[bytes]:
    yield b"first half"
    raise Boom


# (why, keyword arguments of write_chunks): each fails after the temporary file exists.
FAILURES = [
    ("check refuses", {"chunks": [b"new"], "check": _check_fails}),
    ("the content's source fails midway", {"chunks": _chunks_fail()}),
]


@pytest.mark.parametrize(("why", "kwargs"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failure_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path: Path, why: str, kwargs: dict[str, object]
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(Boom):
        atomic.write_chunks(target, mode=0o600, **kwargs)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f"]


# (why, target relative to tmp_path, mode, exception): refused before anything is written.
REFUSALS = [
    ("no such directory", "missing/f", 0o600, FileNotFoundError),
    ("the directory is a file", "file/f", 0o600, NotADirectoryError),
    ("not only permission bits", "f", 0o100600, ValueError),
]


@pytest.mark.parametrize(("why", "rel", "mode", "error"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(tmp_path: Path, why: str, rel: str, mode: int, error: type[Exception]) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(error):
        atomic.write_bytes(tmp_path / rel, b"x", mode=mode)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_chunks_of_any_buffer_are_written_in_order(tmp_path: Path) -> None:
    words = array.array("H", [0x4241, 0x4443])  # a buffer whose items are wider than a byte
    atomic.write_chunks(
        tmp_path / "f", [b"one ", bytearray(b"two "), memoryview(b"three "), words], mode=0o600
    )
    assert (tmp_path / "f").read_bytes() == b"one two three " + words.tobytes()


def test_concurrent_writers_never_show_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    size = 256 * 1024
    atomic.write_bytes(target, b"0" * size, mode=0o600)
    stop = threading.Event()
    errors: list[BaseException] = []
    torn: list[int] = []

    def writer(fill: bytes) -> None:
        try:
            for _ in range(20):
                atomic.write_bytes(target, fill * size, mode=0o600)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if len(data) != size or data != data[:1] * size:
                torn.append(len(data))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(bytes([c]),)) for c in b"abcd"]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert torn == []
    final = target.read_bytes()
    assert final[:1] in (b"a", b"b", b"c", b"d")
    assert final == final[:1] * size
    assert sorted(os.listdir(tmp_path)) == ["f"]


# (name, of, is it one of our temporary files?)
NAMES = [
    (".state.json.0123456789abcdef.tmp", None, True),
    (".state.json.0123456789abcdef.tmp", "state.json", True),
    (".state.json.0123456789abcdef.tmp", "budgets.json", False),
    (".state.json.0123456789abcdef.tmp", "state", False),
    (".f.0123456789abcdef.tmp", None, True),
    ("state.json", None, False),
    (".state.json.tmp", None, False),  # the fixed name older versions used
    (".state.json.0123456789ABCDEF.tmp", None, False),
    (".state.json.0123456789abcde.tmp", None, False),
    ("x.0123456789abcdef.tmp", None, False),
    (".tmp-123-abcd", None, False),
]


@pytest.mark.parametrize(("name", "of", "expected"), NAMES, ids=[f"{n[0]}-of-{n[1]}" for n in NAMES])
def test_is_temp(name: str, of: str | None, expected: bool) -> None:
    assert atomic.is_temp(name, of=of) is expected


def test_is_temp_knows_the_names_it_makes(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 255)
    names: list[str] = []
    atomic.write_bytes(target, b"x", mode=0o600, check=lambda tmp: names.append(tmp.name))
    assert [atomic.is_temp(n, of=target.name) for n in names] == [True]


def test_a_long_target_name_still_fits(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 255)
    atomic.write_bytes(target, b"x", mode=0o600)
    assert target.read_bytes() == b"x"
