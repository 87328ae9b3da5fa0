"""What a unit's SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute= would
refuse, checked against what the real process does (traced with strace). There is no systemd here to
apply the filter, so the test does the comparison systemd's seccomp filter would do."""

from __future__ import annotations

import re
import subprocess
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


@dataclass
class Trace:
    calls: set[str] = field(default_factory=set)
    families: set[str] = field(default_factory=set)
    write_exec_maps: list[str] = field(default_factory=list)


def read_trace(path: Path, after: str | None = None) -> Trace:
    """Syscalls in an `strace -f` log; with `after`, only those following the line containing it."""
    trace = Trace()
    started = after is None
    for line in path.read_text(errors="replace").splitlines():
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
