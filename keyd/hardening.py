"""Process hardening: no core dumps, not ptrace-able by same-uid processes, memory locked.

Each step reports what it could not do instead of failing silently; the caller logs the result and
raises a hardening_degraded event. Python itself limits what "locked" and "wiped" can mean: see
docs/keyd.md, "What keyd cannot protect".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import grp
import mmap
import os
import pwd
import resource

PR_SET_DUMPABLE = 4
MCL_CURRENT = 1
MCL_FUTURE = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


def no_core_dumps() -> list[str]:
    problems = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        problems.append(f"RLIMIT_CORE: {exc}")
    # Not dumpable: no core file, and other processes of the same uid cannot ptrace or read /proc/pid/mem.
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        problems.append(f"PR_SET_DUMPABLE: {_errno_text()}")
    return problems


def lock_memory() -> list[str]:
    """mlockall so the key never reaches swap. Works as root; unprivileged users usually lack the limit."""
    if _libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        return [f"mlockall: {_errno_text()} (key pages may be swapped out)"]
    return []


class LockedSecret:
    """A secret in its own anonymous page: mlock'd (out of swap even when mlockall is not allowed),
    excluded from core dumps (MADV_DONTDUMP), and overwritten before the page is unmapped."""

    def __init__(self, data: bytes | bytearray) -> None:
        if len(data) > mmap.PAGESIZE:
            raise ValueError("a locked secret fits in one page")
        self._map = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        page = (ctypes.c_char * mmap.PAGESIZE).from_buffer(self._map)
        # Pointer-sized arguments: ctypes would otherwise truncate the address to a C int.
        self.locked = (
            _libc.mlock(ctypes.c_void_p(ctypes.addressof(page)), ctypes.c_size_t(mmap.PAGESIZE)) == 0
        )
        del page  # an exported pointer would keep the map from closing
        with contextlib.suppress(OSError):
            self._map.madvise(mmap.MADV_DONTDUMP)
        self._len = len(data)
        self._map[: self._len] = data

    def view(self) -> memoryview:
        """Borrow the secret; release the view (use `with`) before `close`."""
        return memoryview(self._map)[: self._len]

    def close(self) -> None:
        if not self._map.closed:
            self._map[:] = bytes(mmap.PAGESIZE)
            self._map.close()


def harden() -> list[str]:
    return no_core_dumps() + lock_memory()


def resolve_group(name: str | None) -> int | None:
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid


def resolve_user(name: str) -> tuple[int, int]:
    if name.isdigit():
        uid = int(name)
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, uid
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`/`gid` for good: supplementary groups first, then gid, then uid."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("privilege drop did not take")
    # Changing uid resets the dumpable flag on some kernels: set it again.
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
