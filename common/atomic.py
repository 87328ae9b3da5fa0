"""Replace a file atomically: a reader sees the old content or the new, never half of it, and the new
file never exists under its name with a looser mode or another owner than asked for, not even briefly.

How (`write_bytes`, `write_chunks`):

1. A temporary file is created in the target's own directory (a rename is only atomic within one
   file system) under a fresh random name, `.<name>.<16 hex digits>.tmp`, with
   O_CREAT|O_EXCL|O_NOFOLLOW: a planted file or symbolic link makes the write fail, nothing is
   followed, and two writers of the same file never share a temporary file.
2. It is created with the final mode (open's mode can only be narrowed by the umask), then fchmod'd
   to exactly that mode and, if `owner` is given, fchown'd, all before the first byte is written.
3. Everything is written (short writes are continued) and the file is fsync'd.
4. `check`, if given, is called with the temporary path (a `visudo -c`, an `nft -c`): if it raises,
   the old file stays.
5. os.replace puts it over the target, then the directory is fsync'd so the rename itself survives a
   crash. os.replace never follows a symbolic link at the target: the link itself is replaced and
   the file it pointed to is left untouched.

On any failure before the rename the temporary file is removed and the exception propagates; the
target is untouched. A crash (power loss, SIGKILL) can leave a temporary file behind: `is_temp`
recognises its name, for code that lists a directory. The directory must be writable only by the
writer (and root): whoever else can write there could swap the temporary file before the rename.

Standard library only: deploy/server imports this before any virtualenv exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

_TEMP = re.compile(r"\..+\.[0-9a-f]{16}\.tmp", re.DOTALL)
# Keeps the temporary name within NAME_MAX (255) for any target name that fits itself.
_MAX_STEM = 200


def is_temp(name: str, *, of: str | None = None) -> bool:
    """True if `name` (a file name, not a path) is a temporary file of this module, e.g. a crash's
    leftover; with `of`, only one made while writing the file named `of`."""
    if of is not None:
        return re.fullmatch(rf"\.{re.escape(of[:_MAX_STEM])}\.[0-9a-f]{{16}}\.tmp", name) is not None
    return _TEMP.fullmatch(name) is not None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that a rename or a creation in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    check: Callable[[Path], None] | None = None,
) -> None:
    """Replace `path` with `data`, atomically, with exactly `mode` (and `owner`, a (uid, gid)).

    `check(temporary_path)` runs after the data is on disk and before the rename; an exception from
    it leaves the old file. Raises OSError (or what `check` raises); never leaves a temporary file.
    """
    write_chunks(path, (data,), mode=mode, owner=owner, check=check)


def write_chunks(
    path: str | os.PathLike[str],
    chunks: Iterable[bytes | bytearray | memoryview],
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    check: Callable[[Path], None] | None = None,
) -> None:
    """`write_bytes` for content that arrives in pieces (a large backup): nothing is joined in memory.
    An exception raised by the iterable aborts the write like any other failure."""
    if mode & ~0o7777:
        raise ValueError("mode holds permission bits only")
    target = Path(path)
    tmp = target.with_name(f".{target.name[:_MAX_STEM]}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        try:
            if owner is not None:
                # Before fchmod: a chown by root clears set-id bits, and before any byte is written.
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # open's mode went through the umask: say it exactly
            for chunk in chunks:
                view = memoryview(chunk).cast("B")  # lengths in bytes, what os.write counts
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
