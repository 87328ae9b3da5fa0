"""Read what was appended to a log since last time, remembered by device, inode and offset.

Rotation renames the file (`syslog` -> `syslog.1`, or `syslog-20261128` with dateext) and starts a
new one: the old inode is found again among the siblings and read to its end before the new file is
read from the start, so a rotation neither repeats nor drops a line. A file that shrank in place
(copytruncate, or someone emptying it) and a rotated file that cannot be found (already compressed or
deleted) are gaps, and gaps are reported: a log that silently loses lines is what an intruder wants.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class LogRefused(OSError):
    """The log is not to be read: not a regular file, not owned by its writer, or a line without end
    longer than a whole read. The reason is the OSError's strerror (what the checks report)."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EPERM, reason)


@dataclass(frozen=True)
class Position:
    dev: int
    inode: int
    offset: int

    def to_json(self) -> dict[str, int]:
        return {"dev": self.dev, "inode": self.inode, "offset": self.offset}

    @classmethod
    def from_json(cls, data: Any) -> Position | None:
        if not isinstance(data, dict):
            return None
        try:
            pos = cls(int(data["dev"]), int(data["inode"]), int(data["offset"]))
        except (KeyError, TypeError, ValueError):
            return None
        return pos if pos.offset >= 0 else None


@dataclass(frozen=True)
class Read:
    lines: list[bytes]
    position: Position
    gap: str | None = None  # why lines may have been missed, if they may


def _complete(data: bytes) -> bytes:
    """Only whole lines: a line still being written is read next time, in one piece."""
    end = data.rfind(b"\n")
    return data[: end + 1] if end >= 0 else b""


def _whole_lines(data: bytes, limit: int) -> bytes:
    complete = _complete(data)
    if not complete and len(data) >= limit:
        # No newline in a whole read: the offset could never move again and every later line would
        # go unread in silence. Refuse loudly instead (a failed check, every pass, until fixed).
        raise LogRefused(f"a line longer than {limit} bytes")
    return complete


def _read_from(fd: int, offset: int, limit: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return _whole_lines(b"".join(chunks), limit)


def _find_rotated(path: Path, pos: Position) -> Path | None:
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return None
    for candidate in siblings:
        if candidate == path or not candidate.name.startswith(path.name):
            continue
        try:
            st = candidate.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (pos.dev, pos.inode):
            return candidate
    return None


def _open(path: Path, owner: int | None) -> tuple[int, os.stat_result]:
    # O_NOFOLLOW: a symlink put in the log's place is refused (ELOOP), not followed to another file.
    # O_NONBLOCK: a FIFO put in its place cannot hang the pass; it is refused below.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LogRefused(f"{path.name} is not a regular file")
    if owner is not None and st.st_uid != owner:
        os.close(fd)
        raise LogRefused(f"{path.name} is owned by uid {st.st_uid}, not by its writer (uid {owner})")
    return fd, st


def read_new(
    path: Path,
    previous: Position | None,
    *,
    max_bytes: int,
    owner: int | None = None,
    from_start: bool = False,
) -> Read:
    """Lines appended since `previous`; the first call starts at the end (the baseline is "now"),
    or with `from_start` at the beginning (a spool of events: nothing in it was seen yet).

    `owner`: the uid that must own the file (and a rotated predecessor).
    Raises OSError (LogRefused included) when the log cannot be opened or is not to be trusted: the
    caller reports that as a failed check.
    """
    fd, st = _open(path, owner)
    try:
        if previous is None and not from_start:
            return Read([], Position(st.st_dev, st.st_ino, st.st_size))
        if previous is None:
            data = _read_from(fd, 0, max_bytes)
            return Read(data.splitlines(), Position(st.st_dev, st.st_ino, len(data)))
        lines: list[bytes] = []
        gap = None
        start = previous.offset
        if (st.st_dev, st.st_ino) != (previous.dev, previous.inode):
            rotated = _find_rotated(path, previous)
            if rotated is None:
                gap = "rotated file not found"
            else:
                old, _ = _open(rotated, owner)
                try:
                    size = os.fstat(old).st_size
                    os.lseek(old, previous.offset, os.SEEK_SET)
                    tail = os.read(old, min(max_bytes, max(size - previous.offset, 0)))
                    if previous.offset + len(tail) < size:
                        # More than one run may read: finish the old file next time, whole lines only.
                        tail = _whole_lines(tail, max_bytes)
                        lines.extend(tail.splitlines())
                        return Read(
                            lines, Position(previous.dev, previous.inode, previous.offset + len(tail))
                        )
                    # The writer has moved on: a last line without its newline is still a line.
                    lines.extend(tail.splitlines())
                finally:
                    os.close(old)
            start = 0
        elif st.st_size < previous.offset:
            gap = "log shrank (truncated)"
            start = 0
        data = _read_from(fd, start, max_bytes)
        lines.extend(data.splitlines())
        return Read(lines, Position(st.st_dev, st.st_ino, start + len(data)), gap)
    finally:
        os.close(fd)
