"""Filesystem primitives for the CA directory: strict permissions, atomic writes, one lock.

The CA directory holds the issuing key and the index that decides who is revoked, so every run
checks that nothing in it is readable by anyone but its owner, and refuses to run otherwise
(fail closed: a group-readable key may already have been copied).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ca.errors import CAError, UnsafeEnvironment
from common import atomic

DIR_MODE = 0o700
FILE_MODE = 0o600


def check_private(path: Path) -> None:
    """Refuse unless `path` (a file or directory) is owned by us and not accessible to group/other."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise CAError(f"{path} is missing") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeEnvironment(f"refusing to run: {path} is a symbolic link")
    if st.st_uid != os.geteuid():
        raise UnsafeEnvironment(
            f"refusing to run: {path} is owned by uid {st.st_uid}, not by uid {os.geteuid()}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        want = "700" if stat.S_ISDIR(st.st_mode) else "600"
        raise UnsafeEnvironment(
            f"refusing to run: {path} has mode {mode:04o}, which lets others read it; "
            f"fix it with: chmod {want} {path}"
        )


def check_tree(root: Path) -> None:
    """Check `root` and everything below it (the CA directory is small: a full walk is cheap)."""
    check_private(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames) + sorted(filenames):
            check_private(Path(dirpath) / name)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old or the new content, never a torn file;
    private (0600) from its creation."""
    atomic.write_bytes(path, data, mode=FILE_MODE)


def create_exclusive(path: Path, data: bytes) -> None:
    """Create a new private file; refuse to overwrite anything (a bundle, a server key)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        raise CAError(f"{path} already exists: refusing to overwrite it") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise


def make_private_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE)
    os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask; say it exactly


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold the CA's lock, or refuse at once: two admins (or an admin and the CRL timer) must not race."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UnsafeEnvironment(
                    "another CA operation is in progress (the CA lock is held); try again in a moment"
                ) from None
            raise
        yield
    finally:
        os.close(fd)  # closing releases the flock
