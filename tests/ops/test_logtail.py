"""Offsets by inode: appends are read once, rotation neither repeats nor drops a line, gaps are named."""

from __future__ import annotations

import os
from pathlib import Path

from ops.logtail import Position, read_new

MAX = 1 << 20


def _append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def test_first_read_starts_at_the_end_then_reads_only_appends(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("old 1\nold 2\n")
    first = read_new(log, None, max_bytes=MAX)
    assert first.lines == []
    _append(log, "new 1\nnew 2\n")
    second = read_new(log, first.position, max_bytes=MAX)
    assert second.lines == [b"new 1", b"new 2"]
    assert read_new(log, second.position, max_bytes=MAX).lines == []


def test_a_line_still_being_written_is_read_whole_next_time(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("")
    pos = read_new(log, None, max_bytes=MAX).position
    _append(log, "complete\nhalf a li")
    got = read_new(log, pos, max_bytes=MAX)
    assert got.lines == [b"complete"]
    _append(log, "ne\n")
    assert read_new(log, got.position, max_bytes=MAX).lines == [b"half a line"]


def test_rotation_by_rename_reads_the_old_tail_then_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    log.write_text("before\n")
    pos = read_new(log, None, max_bytes=MAX).position
    _append(log, "written just before rotation\n")
    os.rename(log, tmp_path / "error.log.1")
    log.write_text("first in the new file\n")
    got = read_new(log, pos, max_bytes=MAX)
    assert got.lines == [b"written just before rotation", b"first in the new file"]
    assert got.gap is None
    assert read_new(log, got.position, max_bytes=MAX).lines == []


def test_dateext_rotation_is_found_too(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("")
    pos = read_new(log, None, max_bytes=MAX).position
    _append(log, "late line\n")
    os.rename(log, tmp_path / "syslog-20261128")
    log.write_text("")
    got = read_new(log, pos, max_bytes=MAX)
    assert got.lines == [b"late line"]
    assert got.gap is None


def test_rotated_file_gone_is_a_gap(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("")
    pos = read_new(log, None, max_bytes=MAX).position
    _append(log, "lost\n")
    os.rename(log, tmp_path / "elsewhere")
    log.write_text("new\n")
    got = read_new(log, pos, max_bytes=MAX)
    assert got.lines == [b"new"]
    assert got.gap == "rotated file not found"


def test_truncated_in_place_is_a_gap_and_reads_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("a long line that was there\n")
    pos = read_new(log, None, max_bytes=MAX).position
    with log.open("r+") as fh:
        fh.truncate(0)
    _append(log, "x\n")
    got = read_new(log, pos, max_bytes=MAX)
    assert got.lines == [b"x"]
    assert got.gap == "log shrank (truncated)"


def test_a_large_backlog_is_read_over_several_passes_without_loss(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("")
    pos = read_new(log, None, max_bytes=MAX).position
    _append(log, "".join(f"line {i:04d}\n" for i in range(100)))
    seen: list[bytes] = []
    for _ in range(200):
        got = read_new(log, pos, max_bytes=64)
        seen += got.lines
        pos = got.position
        if not got.lines:
            break
    assert seen == [f"line {i:04d}".encode() for i in range(100)]


def test_a_corrupt_position_is_treated_as_none() -> None:
    assert Position.from_json({"dev": 1, "inode": 2, "offset": -5}) is None
    assert Position.from_json({"dev": "x"}) is None
    assert Position.from_json([1, 2, 3]) is None
