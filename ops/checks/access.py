"""Access log review: requests per employee certificate and in total since the last review, against
thresholds that start low; plus the per-day counters behind the daily report (who did how much).

The vhost must log in the `strongroom_review` format of docs/monitoring.md: tab-separated time with
offset, client certificate serial, certificate CN, method, status.

No path and no query string: the review needs who and how much, never what (no customer data).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, Context, Result
from ops.logtail import Position, read_new

NAME = "access"
KEEP_DAYS = 8
MAX_LINE = 1024
_LINE = re.compile(
    rb"^(?P<day>\d{4}-\d{2}-\d{2})T\d{2}:\d{2}:\d{2}[+-]\d{4}\t"
    rb"(?P<serial>[0-9A-Fa-f]{1,64}|-)\t(?P<cn>[^\t]{1,128})\t(?P<method>[A-Z]{1,16}|-)\t(?P<status>\d{3})$"
)


@dataclass(frozen=True)
class Request:
    day: str
    who: str  # "SERIAL CN": the certificate, as the admin's cert list shows it
    method: str
    status: int


def parse_line(line: bytes) -> Request | None:
    """One access-log line in the review format, or None when it is not one."""
    if len(line) > MAX_LINE:
        return None
    m = _LINE.match(line)
    if m is None:
        return None
    cn = m["cn"].decode("ascii", "replace")
    if not cn.isprintable():
        return None
    serial = m["serial"].decode()
    # Apache prints the serial as whole bytes (a leading 0 half the time); name a certificate by its
    # number, as `python -m ca list` and the web app do, so one certificate is always one line.
    if serial != "-":
        serial = f"{int(serial, 16):X}"
    return Request(
        day=m["day"].decode(),
        who=f"{serial} {cn}",
        method=m["method"].decode(),
        status=int(m["status"]),
    )


def run(ctx: Context) -> Result:
    s = ctx.settings
    if s.access_log is None:
        raise CheckFailed("access_log is not set")
    state = ctx.state or {}
    got = read_new(s.access_log, Position.from_json(state.get("position")), max_bytes=s.max_read_bytes)
    per_cert: Counter[str] = Counter()
    days: dict[str, dict[str, int]] = {d: dict(c) for d, c in state.get("days", {}).items()}
    malformed = 0
    for line in got.lines:
        req = parse_line(line)
        if req is None:
            malformed += 1
            continue
        per_cert[req.who] += 1
        day = days.setdefault(req.day, {})
        day[req.who] = day.get(req.who, 0) + 1
    findings = []
    for who, n in sorted(per_cert.items()):
        if n > s.access_per_cert:
            findings.append(
                Finding(
                    Alert.ACCESS_THRESHOLD, resource=who, detail=f"requests={n} threshold={s.access_per_cert}"
                )
            )
    total = sum(per_cert.values())
    if total > s.access_total:
        findings.append(
            Finding(
                Alert.ACCESS_THRESHOLD,
                resource="total",
                detail=f"requests={total} threshold={s.access_total}",
            )
        )
    if malformed:
        # A line we cannot attribute is a request nobody is counted for: never a silent pass.
        findings.append(Finding(Alert.CHECK_FAILED, resource=NAME, detail=f"malformed_lines={malformed}"))
    if got.gap:
        findings.append(Finding(Alert.LOG_GAP, resource=NAME, detail=got.gap))
    kept = dict(sorted(days.items())[-KEEP_DAYS:])
    return Result(findings, {"position": got.position.to_json(), "days": kept})


def daily_report(state: dict[str, Any] | None, day: str) -> str:
    """Who did how much on `day`: certificates and counts only."""
    counts: dict[str, int] = ((state or {}).get("days") or {}).get(day, {})
    lines = [f"Strongroom access report for {day}", ""]
    if not counts:
        lines.append("no requests recorded")
    for who, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"{n:8d}  {who}")
    lines += ["", f"{sum(counts.values()):8d}  total"]
    return "\n".join(lines) + "\n"
