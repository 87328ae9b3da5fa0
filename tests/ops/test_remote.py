"""The comparison on files (the two-rsyslogd runs are in test_rsyslog.py): the window, rotation on
either side, and deletion of the oldest local lines."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.ops.conftest import queued

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _line(i: int) -> str:
    return f"{(T0 + timedelta(seconds=i)).isoformat(timespec='microseconds')} vault strongroom - event {i}\n"


def _setup(tmp_path: Path, make_settings: Callable[..., Settings]) -> tuple[Settings, Path, Path]:
    local, remote = tmp_path / "local.log", tmp_path / "remote.log"
    s = make_settings(remote_local_log=str(local), remote_copy=str(remote), remote_grace_seconds=60)
    return s, local, remote


def _pass(s: Settings, engine: sa.Engine, *, at: int = 600) -> None:
    run_pass(s, state=StateDir(s.state_dir), engine=engine, now=T0 + timedelta(seconds=at), only=("remote",))


def test_equal_copies_and_recent_lines_are_quiet(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    s, local, remote = _setup(tmp_path, make_settings)
    local.write_text("".join(_line(i) for i in range(10)) + _line(590))  # 590: within the grace period
    remote.write_text("".join(_line(i) for i in range(10)))
    _pass(s, engine)
    assert queued(engine) == []


def test_deleting_the_oldest_local_lines_does_not_move_the_window(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    s, local, remote = _setup(tmp_path, make_settings)
    lines = [_line(i) for i in range(10)]
    local.write_text("".join(lines))
    remote.write_text("".join(lines))
    _pass(s, engine)
    local.write_text("".join(lines[3:]))  # same inode: edited in place
    _pass(s, engine)
    assert queued(engine) == [("ops.remote_log_mismatch", str(local), "lines_missing_or_changed_here=3")]


def test_the_log_hosts_rotation_is_no_false_alarm(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    s, local, remote = _setup(tmp_path, make_settings)
    lines = [_line(i) for i in range(10)]
    local.write_text("".join(lines))
    remote.write_text("".join(lines[6:]))  # the log host started a new file at line 6
    _pass(s, engine)
    assert queued(engine) == []


def test_a_local_rotation_starts_a_new_window(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    s, local, remote = _setup(tmp_path, make_settings)
    remote.write_text("".join(_line(i) for i in range(5)))
    local.write_text("".join(_line(i) for i in range(5)))
    _pass(s, engine)
    local.rename(tmp_path / "local.log.1")
    local.write_text("".join(_line(i) for i in range(5, 10)))
    with remote.open("a") as fh:
        fh.write("".join(_line(i) for i in range(5, 10)))
    _pass(s, engine)
    assert queued(engine) == []


def test_a_missing_copy_is_a_failed_check(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    s, local, _ = _setup(tmp_path, make_settings)
    local.write_text(_line(1))
    _pass(s, engine)
    assert queued(engine) == [("ops.check_failed", "remote", "FileNotFoundError: No such file or directory")]
