"""One watchdog pass: run the enabled checks, alert each new finding once, then remember the state.

Order matters for "never miss, never lose": alerts are committed to the outbox first, and only then are
log offsets and open findings saved. A crash in between re-alerts next run rather than dropping alerts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ops import alerts
from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, CheckModule, Context, Result, registry
from ops.settings import Settings
from ops.state import StateDir

BASELINE = "baseline"
PROPOSED = "baseline-proposed"
OPEN = "open-findings"


class BaselineError(RuntimeError):
    """The proposed baseline is missing or is not the one the admin reviewed."""


@dataclass(frozen=True)
class Outcome:
    alerted: list[Finding]  # queued in the outbox in this pass
    ongoing: list[Finding]  # still true, already alerted earlier


def _failure(name: str, exc: BaseException) -> Finding:
    if isinstance(exc, CheckFailed):
        reason = str(exc)
    elif isinstance(exc, OSError):
        reason = f"{type(exc).__name__}: {exc.strerror or ''}".strip()
    else:
        reason = type(exc).__name__
    return Finding(Alert.CHECK_FAILED, resource=name, detail=reason, key=f"failed|{reason}")


def _run_one(mod: CheckModule, ctx: Context) -> Result:
    try:
        return mod.run(ctx)
    except Exception as exc:  # noqa: BLE001 - not swallowed: every failure becomes a CHECK_FAILED alert
        # The previous state is kept: a log that could not be read is read from the same offset later.
        return Result([_failure(mod.name, exc)], ctx.state)


def run_pass(
    settings: Settings,
    *,
    state: StateDir,
    engine: sa.Engine,
    now: datetime,
    only: tuple[str, ...] | None = None,
) -> Outcome:
    with state.locked():
        return _run_pass(settings, state=state, engine=engine, now=now, only=only)


def _run_pass(
    settings: Settings,
    *,
    state: StateDir,
    engine: sa.Engine,
    now: datetime,
    only: tuple[str, ...] | None,
) -> Outcome:
    mods = registry()
    names = only or settings.checks
    baseline = (state.load(BASELINE) or {}).get("checks", {})
    opened: dict[str, list[str]] = state.load(OPEN) or {}
    new_open: dict[str, list[str]] = dict(opened)
    new_states: dict[str, dict[str, Any] | None] = {}
    alerted: list[Finding] = []
    ongoing: list[Finding] = []
    for name in names:
        mod = mods[name]
        ctx = Context(
            settings=settings,
            now=now,
            state=state.load(f"check-{name}"),
            baseline=baseline.get(name),
            engine=engine,
        )
        result = _run_one(mod, ctx)
        new_states[name] = result.state
        was_open = set(opened.get(name, []))
        keys = []
        for f in result.findings:
            if f.key is None:
                alerted.append(f)
                continue
            keys.append(f.key)
            (ongoing if f.key in was_open else alerted).append(f)
        new_open[name] = sorted(set(keys))
    if alerted:
        with engine.begin() as conn:
            alerts.enqueue(conn, alerted, now=now)
    for name, st in new_states.items():
        if st is not None:
            state.save(f"check-{name}", st)
    state.save(OPEN, new_open)
    return Outcome(alerted, ongoing)


def record_baseline(settings: Settings, *, state: StateDir, now: datetime) -> str:
    """Snapshot what is running and listening now as a proposal; returns its digest for `approve`."""
    state.ensure()
    mods = registry()
    checks = {}
    for name in settings.checks:
        snap = mods[name].snapshot
        if snap is not None:
            checks[name] = snap(Context(settings=settings, now=now, state=None, baseline=None))
    state.save(PROPOSED, {"recorded_at": now.isoformat(), "checks": checks})
    return digest(state, PROPOSED)


def digest(state: StateDir, name: str) -> str:
    raw = state.raw(name)
    if raw is None:
        raise BaselineError(f"no {name} recorded")
    return hashlib.sha256(raw).hexdigest()


def approve_baseline(state: StateDir, expected_digest: str) -> None:
    """Approve the proposal the admin reviewed, and only that one: the digest binds the two."""
    with state.locked():
        _approve(state, expected_digest)


def _approve(state: StateDir, expected_digest: str) -> None:
    raw = state.raw(PROPOSED)
    if raw is None:
        raise BaselineError("no proposed baseline: run `baseline record` first")
    if hashlib.sha256(raw).hexdigest() != expected_digest.lower():
        raise BaselineError("the proposed baseline changed since it was shown: review it again")
    data = state.load(PROPOSED)
    assert data is not None  # noqa: S101 - just read above
    state.save(BASELINE, data)
    state.remove(PROPOSED)
    # Conditions the new baseline allows are no longer open.
    opened = state.load(OPEN) or {}
    for name in data.get("checks", {}):
        opened.pop(name, None)
    state.save(OPEN, opened)
