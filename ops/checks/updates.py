"""Updates: packages with pending upgrades from apt's own view (a simulated upgrade, no change made),
security ones flagged. Alerts once per new set of pending packages, not on every run.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass

from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, Context, Result

NAME = "updates"
TIMEOUT = 300
# Inst openssl [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])
# optionally followed by apt's ordering notes: [libpam-modules:amd64 on libpam-modules-bin:amd64] []
_INST = re.compile(
    r"^Inst (?P<pkg>[a-z0-9][a-z0-9+.-]{0,99})"
    r"(?: \[(?P<old>[^\]\s]{1,100})\])?"
    r" \((?P<rest>[^()]{1,500})\)"
    r"(?: \[[^\[\]]{0,500}\]){0,8}$"
)


@dataclass(frozen=True)
class Pending:
    package: str
    new_version: str
    security: bool


def parse(output: str) -> list[Pending]:
    """`apt-get -s upgrade` output -> the packages it would install. Other lines are ignored."""
    out = []
    for line in output.splitlines():
        if line.split(" ", 1)[0] != "Inst":
            continue
        m = _INST.match(line)
        if m is None:
            raise CheckFailed("unexpected apt output")
        rest = m["rest"].split()
        if not rest:
            raise CheckFailed("unexpected apt output")
        origins = " ".join(rest[1:])
        out.append(Pending(m["pkg"], rest[0], "Debian-Security" in origins or "-security" in origins))
    return out


def run(ctx: Context) -> Result:
    argv = [
        ctx.settings.apt_binary,
        "-s",
        "-o",
        "Debug::NoLocking=true",
        "-o",
        "APT::Get::Show-Versions=0",
        "upgrade",
    ]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except FileNotFoundError:
        raise CheckFailed("apt-get is missing") from None
    except subprocess.TimeoutExpired:
        raise CheckFailed("apt-get timed out") from None
    if proc.returncode != 0:
        raise CheckFailed(f"apt-get exited with {proc.returncode}")
    pending = parse(proc.stdout)
    findings = []
    security = [p for p in pending if p.security]
    if pending:
        key = hashlib.sha256("\n".join(f"{p.package} {p.new_version}" for p in pending).encode()).hexdigest()
        findings.append(
            Finding(Alert.UPDATES_PENDING, resource="apt", detail=f"packages={len(pending)}", key=key)
        )
    if security:
        key = hashlib.sha256("\n".join(f"{p.package} {p.new_version}" for p in security).encode()).hexdigest()
        names = " ".join(p.package for p in security)
        findings.append(
            Finding(
                Alert.SECURITY_UPDATES_PENDING,
                resource="apt",
                detail=f"packages={len(security)}: {names}",
                key=key,
            )
        )
    return Result(findings)
