"""Integrity: AIDE compares the file system against its database (the hardening issue writes the
config; its path is a setting). AIDE's exit code is a bitmask: 1 added, 2 removed, 4 changed; 14 and
above are AIDE's own errors, which are a failed check, not a clean one.
"""

from __future__ import annotations

import hashlib
import re
import subprocess

from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, Context, Result

NAME = "integrity"
TIMEOUT = 3600
_CHANGES = {1: "added", 2: "removed", 4: "changed"}
# Entry lines of the summary ("f+++++++++++++++++: /etc/x", "f > ...  H  : /etc/y"): what changed,
# without AIDE's timestamps, so the same changes give the same key on every run.
_ENTRY = re.compile(rb"^[a-z!][ +\-<>=.a-zA-Z]{0,40}: /.*$", re.MULTILINE)


def run(ctx: Context) -> Result:
    s = ctx.settings
    if not s.aide_config.is_file():
        raise CheckFailed("AIDE config is missing")
    try:
        proc = subprocess.run(
            [s.aide_binary, "--check", "--config", str(s.aide_config)],
            capture_output=True,
            timeout=TIMEOUT,
            env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except FileNotFoundError:
        raise CheckFailed("aide is missing") from None
    except subprocess.TimeoutExpired:
        raise CheckFailed("aide timed out") from None
    rc = proc.returncode
    if rc == 0:
        return Result([])
    if rc < 0 or rc > 7:
        raise CheckFailed(f"aide failed with exit code {rc}")
    what = ",".join(name for bit, name in _CHANGES.items() if rc & bit)
    # Same report, same alert: AIDE keeps reporting a change until the admin updates its database.
    key = hashlib.sha256(b"\n".join([str(rc).encode(), *_ENTRY.findall(proc.stdout)])).hexdigest()
    return Result([Finding(Alert.INTEGRITY_CHANGED, resource=str(s.aide_config), detail=what, key=key)])
