"""The checks. Every module has the same shape:

    NAME = "processes"
    def run(ctx: Context) -> Result: ...
    def snapshot(ctx: Context) -> dict  # only checks with an admin-approved baseline

`run` reads its previous state from `ctx.state` and returns findings plus the state to keep. It raises
`CheckFailed` (or lets OSError out) when it cannot look: the runner turns that into an alert, never a
pass (PCI DSS 10.7.2: failures of security controls are detected and alerted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ops.alerts import Finding
from ops.settings import Settings


class CheckFailed(RuntimeError):
    """The check could not look (tool missing, permission denied, unparseable output)."""


@dataclass(frozen=True)
class Context:
    settings: Settings
    now: datetime
    state: dict[str, Any] | None  # what this check kept last run
    baseline: dict[str, Any] | None  # this check's part of the approved baseline
    engine: sa.Engine | None = None  # the web app's database (the remote check compares audit heads)


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)
    state: dict[str, Any] | None = None  # None: keep nothing


@dataclass(frozen=True)
class CheckModule:
    name: str
    run: Callable[[Context], Result]
    snapshot: Callable[[Context], dict[str, Any]] | None = None


def registry() -> dict[str, CheckModule]:
    from ops.checks import (
        access,
        integrity,
        keyd,
        keyd_events,
        logs,
        logsize,
        outbox,
        ports,
        processes,
        remote,
        updates,
    )

    mods = (processes, ports, logs, access, updates, keyd, keyd_events, integrity, remote, outbox, logsize)
    return {m.NAME: CheckModule(m.NAME, m.run, getattr(m, "snapshot", None)) for m in mods}
