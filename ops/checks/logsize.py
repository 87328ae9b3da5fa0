"""Logs that grow past a bound: an alarm before a disk fills (ModSecurity's audit log
reached 1.5 GB in ~52,000 requests, between two runs of logrotate).

Every file named in `logs`, `access_log`, and `log_size_paths` (for logs nobody tails, such as
ModSecurity's audit log) is checked against `log_max_bytes`. A missing file is not an alarm (the logs
check reports unreadable logs); a file past the bound alarms once while it stays there (a keyed finding).
"""

from __future__ import annotations

import os
from pathlib import Path

from ops.alerts import Alert, Finding
from ops.checks import Context, Result

NAME = "logsize"


def watched(ctx: Context) -> dict[str, Path]:
    s = ctx.settings
    paths = dict(s.logs)
    if s.access_log is not None:
        paths["access_log"] = s.access_log
    paths.update(s.log_size_paths)
    return paths


def run(ctx: Context) -> Result:
    limit = ctx.settings.log_max_bytes
    findings = []
    for name, path in sorted(watched(ctx).items()):
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            continue
        if size > limit:
            findings.append(
                Finding(
                    Alert.LOG_TOO_BIG,
                    resource=name,
                    detail=f"bytes={size} limit={limit}",
                    key=f"logsize:{name}",
                )
            )
    return Result(findings, None)
