"""Processes: every running program must match the approved baseline (name, user, command line).

Kernel threads are skipped (by the kernel's PF_KTHREAD flag, which user space cannot set; a pid or a
parent pid is no proof inside a PID namespace). Command lines
are compared but never put in an alert: they can carry passwords.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

import psutil

from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, Context, Result

NAME = "processes"
PF_KTHREAD = 0x00200000


def _is_kernel_thread(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False  # gone: psutil will not list it either
    # Fields after the ")" that closes the command name: state ppid pgrp session tty tpgid flags ...
    return bool(int(stat.rsplit(")", 1)[1].split()[6]) & PF_KTHREAD)


def _running() -> list[dict[str, Any]]:
    out = []
    for p in psutil.process_iter(["pid", "name", "username", "cmdline"]):
        info = p.info
        if info["pid"] == os.getpid() or _is_kernel_thread(info["pid"]):
            continue
        if info["name"] is None or info["username"] is None:
            # psutil could not read it (access denied): a process we cannot see is not a pass.
            raise CheckFailed(f"cannot inspect pid {info['pid']}")
        out.append(
            {
                "pid": info["pid"],
                "name": info["name"],
                "user": info["username"],
                "cmdline": " ".join(info["cmdline"] or []),
            }
        )
    return out


def snapshot(ctx: Context) -> dict[str, Any]:
    """The allowlist as it is now, exact command lines: the admin reviews it, and may replace a
    `cmdline` by a `cmdline_glob` (for arguments that change, such as worker numbers). The settings'
    `routine_processes` (what the server starts on demand, absent at a quiet moment) are proposed too."""
    seen = {(p["name"], p["user"], p["cmdline"]) for p in _running()}
    allow = [{"name": n, "user": u, "cmdline": c} for n, u, c in sorted(seen)]
    allow += [dict(e) for e in ctx.settings.routine_processes if e not in allow]
    return {"allow": allow}


def _cmdline_matches(entry: dict[str, str], cmdline: str) -> bool:
    # Exact unless the admin wrote a glob on purpose: recorded command lines hold brackets
    # ("sshd: ... [listener]") that a glob would read as character classes.
    if "cmdline_glob" in entry:
        return fnmatch.fnmatchcase(cmdline, entry["cmdline_glob"])
    return entry["cmdline"] == cmdline


def _allowed(proc: dict[str, Any], allow: list[dict[str, str]]) -> bool:
    # The name and user must match exactly.
    return any(
        a["name"] == proc["name"] and a["user"] == proc["user"] and _cmdline_matches(a, proc["cmdline"])
        for a in allow
    )


def run(ctx: Context) -> Result:
    running = _running()  # first: a check that cannot look says so even without a baseline
    if ctx.baseline is None:
        return Result([Finding(Alert.BASELINE_MISSING, resource=NAME, key="baseline")])
    allow = ctx.baseline["allow"]
    findings = []
    for proc in running:
        if not _allowed(proc, allow):
            findings.append(
                Finding(
                    Alert.PROCESS_UNKNOWN,
                    resource=f"{proc['name']} user={proc['user']}",
                    detail=f"pid={proc['pid']}",
                    key=f"{proc['name']}|{proc['user']}|{proc['cmdline']}",
                )
            )
    return Result(findings)
