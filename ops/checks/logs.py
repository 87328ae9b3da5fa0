"""Logs that should stay quiet (the system log, Apache's error log): any new data alerts.

Routine lines the admin listed in `log_ignore` are not news. Only counts go into the alert: a log
line can hold anything, including what an attacker typed.
ModSecurity's denials in Apache's error log are counted and alerted on their own.
"""

from __future__ import annotations

import re
from typing import Any

from ops.alerts import Alert, Finding
from ops.checks import Context, Result
from ops.logtail import Position, read_new

NAME = "logs"
MODSEC_DENIED = b"ModSecurity: Access denied"


def run(ctx: Context) -> Result:
    s = ctx.settings
    previous: dict[str, Any] = (ctx.state or {}).get("positions", {})
    positions: dict[str, Any] = {}
    findings: list[Finding] = []
    failed: list[str] = []
    ignore = [re.compile(p.encode()) for p in s.log_ignore]
    for name, path in sorted(s.logs.items()):
        try:
            got = read_new(path, Position.from_json(previous.get(name)), max_bytes=s.max_read_bytes)
        except OSError as exc:
            failed.append(f"{name}: {exc.strerror or type(exc).__name__}")
            if name in previous:
                positions[name] = previous[name]
            continue
        positions[name] = got.position.to_json()
        if got.gap:
            findings.append(Finding(Alert.LOG_GAP, resource=name, detail=got.gap))
        news = [line for line in got.lines if not any(p.search(line) for p in ignore)]
        if news:
            findings.append(Finding(Alert.LOG_NEW, resource=name, detail=f"lines={len(news)}"))
        if name == s.modsecurity_log:
            blocked = sum(1 for line in got.lines if MODSEC_DENIED in line)
            if blocked:
                findings.append(Finding(Alert.MODSECURITY_BLOCKED, resource=name, detail=f"denied={blocked}"))
    if failed:
        # The readable logs' positions are kept (their alerts go out); the failure is its own alert.
        findings.append(Finding(Alert.CHECK_FAILED, resource=NAME, detail="; ".join(failed)))
    return Result(findings, {"positions": positions})
