"""What a unit's SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute= would
refuse, checked against what the real process does (traced with strace). There is no systemd here to
apply the filter, so the test does the comparison systemd's seccomp filter would do."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

_CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z_][a-z0-9_]*)(?:\(| resumed>)")
_FAMILY = re.compile(r"^\d+\s+(?:socket|socketpair)\((AF_[A-Z0-9]+)")
_MAP = re.compile(r"^\d+\s+(?:mmap|mprotect|pkey_mprotect)\(.*\)\s+=")


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`: every @group with its members (syscalls or @groups)."""
    out = subprocess.run(
        [analyze, "syscall-filter", "--no-pager"], capture_output=True, text=True, check=True
    )
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in out.stdout.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and raw.startswith(" "):
            current.append(line.split()[0])
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    names: set[str] = set()
    for member in groups[name]:
        names |= expand(member, groups)
    return names


def allowed_syscalls(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """The allow list systemd builds from the unit's SystemCallFilter= lines, in order."""
    assert filters, "no SystemCallFilter="
    assert not filters[0].startswith("~"), "expected an allow list first"
    # systemd always permits @default (exit, futex, execve...) in allow-list mode.
    allowed: set[str] = expand("@default", groups)
    for line in filters:
        deny = line.startswith("~")
        for item in line.removeprefix("~").split():
            if deny:
                allowed -= expand(item, groups)
            else:
                allowed |= expand(item, groups)
    return allowed


_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. [a-z0-9_]+ resumed>(.*)$")


def _lines(log: Path) -> list[str]:
    """The log's lines with each interrupted call (another thread ran in between) joined again."""
    pending: dict[str, str] = {}
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.endswith(_UNFINISHED):
            pending[line.split()[0]] = line.removesuffix(_UNFINISHED)
            continue
        m = _RESUMED.match(line)
        if m and m[1] in pending:
            line = pending.pop(m[1]) + m[2]
        out.append(line)
    return out


@dataclass
class Trace:
    calls: set[str] = field(default_factory=set)
    families: set[str] = field(default_factory=set)
    write_exec_maps: list[str] = field(default_factory=list)


def read_trace(path: Path, after: str | None = None) -> Trace:
    """Syscalls in an `strace -f` log; with `after`, only those following the line containing it."""
    trace = Trace()
    started = after is None
    for line in _lines(path):
        if not started:
            started = after is not None and after in line
            continue
        m = _CALL.match(line)
        if m:
            trace.calls.add(m[1])
        fam = _FAMILY.match(line)
        if fam:
            trace.families.add(fam[1])
        if _MAP.match(line) and "PROT_WRITE" in line and "PROT_EXEC" in line:
            trace.write_exec_maps.append(line)
    assert started, f"marker {after!r} not in the trace"
    return trace


# File accesses AppArmor mediates, from a `strace -f -y` log: successful opens (read, or write when
# opened for writing/creating), executable mappings, and Unix sockets connected or bound by path.
# With -y strace prints the file an fd refers to: for opens that is the resolved path (symbolic links
# followed), which is what AppArmor mediates.
_OPEN = re.compile(r'^\d+\s+openat\([^,]+, "[^"]*", (?P<flags>[A-Z_|]+)[^)]*\)\s+=\s+\d+<(?P<real>[^>]*)>')
_MMAP_X = re.compile(r"^\d+\s+mmap\(.*PROT_EXEC.*, \d+<(?P<path>[^>]+)>, .*\)\s+=\s+0x")
_UNIX = re.compile(
    r"^\d+\s+(?P<call>connect|bind)\(\d+(?:<[^>]*>)?, "
    r'\{sa_family=AF_UNIX, sun_path="(?P<path>[^"]+)"\}.*\)\s+=\s+0'
)
_EXEC = re.compile(r'^\d+\s+execve\("(?P<path>[^"]+)".*\)\s+=\s+0')


def file_accesses(log: Path, after: str | None = None) -> set[tuple[str, str]]:
    """(path, permission) pairs: 'r', 'w', 'm' (mapped executable), 'x' (executed)."""
    out: set[tuple[str, str]] = set()
    started = after is None
    for line in _lines(log):
        if not started:
            started = after is not None and after in line
            continue
        if m := _OPEN.match(line):
            path = m["real"]
            flags = m["flags"].split("|")
            if "O_PATH" in flags:  # a path handle, no read or write: AppArmor does not mediate it
                continue
            # AppArmor names a directory with a trailing slash however it was opened (the
            # trace is read while the traced files still exist).
            if "O_DIRECTORY" in flags or path == "/" or Path(path).is_dir():
                path = path.rstrip("/") + "/"
            writing = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"} & set(flags)
            out.add((path, "w" if writing else "r"))
            if "O_RDWR" in flags:
                out.add((path, "r"))
        elif m := _MMAP_X.match(line):
            out.add((m["path"], "m"))
        elif m := _UNIX.match(line):
            if not m["path"].startswith("@"):  # abstract sockets are not files
                out.add((m["path"], "w"))
        elif m := _EXEC.match(line):
            out.add((m["path"], "x"))
    return out


# /proc/self and /proc/thread-self as a running service's (any fixed pid: the profiles say @{pid}).
PROC_MOVES = [("/proc/self/", "/proc/4242/"), ("/proc/thread-self/", "/proc/4242/task/4243/")]


def python_service_moves(checkout: Path) -> list[tuple[str, str]]:
    """Where a Python service's files are in production: the checkout at /opt/strongroom, this
    interpreter's files at Debian's python3's places, /proc as a service's."""
    prefix = Path(sys.base_prefix)
    return [
        (f"{checkout}/", "/opt/strongroom/"),
        (f"{prefix}/lib/python3.11/", "/usr/lib/python3.11/"),
        (f"{prefix}/lib/", "/usr/lib/x86_64-linux-gnu/"),
        (f"{prefix}/bin/", "/usr/bin/"),
        *PROC_MOVES,
    ]


def translate(accesses: set[tuple[str, str]], prefixes: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Move test paths to their production places (first matching prefix wins)."""
    moved = set()
    for path, perm in accesses:
        for old, new in prefixes:
            if path == old.rstrip("/") or path.startswith(old):
                path = new + path[len(old) :] if path.startswith(old) else new.rstrip("/")
                break
        moved.add((path, perm))
    return moved
