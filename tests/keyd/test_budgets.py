"""Decrypt budgets: exact thresholds, every window, persistence across restarts, fail closed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keyd.budgets import Budgets, BudgetWriteFailed, Exceeded, Limits
from keyd.client import Context
from keyd.errors import QuotaExceeded
from tests.keyd.conftest import Keyd, raw_key


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _budgets(
    path: Path, clock: Clock, employee: dict[str, int], overall: dict[str, int] | None = None
) -> Budgets:
    return Budgets(Limits(employee=employee, overall=overall or {}), path=path, clock=clock)


def _one(b: Budgets, actor: str) -> Exceeded | None:
    granted, exceeded = b.charge(actor)
    assert granted == (0 if exceeded else 1)
    return exceeded


def test_a_batch_is_granted_up_to_the_threshold(tmp_path: Path) -> None:
    b = _budgets(tmp_path / "b.json", Clock(), {"day": 10})
    assert b.charge("alice", 4) == (4, None)
    granted, exceeded = b.charge("alice", 10)
    assert granted == 6
    assert exceeded is not None
    assert exceeded.window == "day"
    assert b.charge("alice", 1)[0] == 0


@pytest.mark.parametrize(("window", "seconds"), [("minute", 60), ("hour", 3600), ("day", 86400)])
def test_refuses_at_exactly_the_threshold_then_rolls_over(tmp_path: Path, window: str, seconds: int) -> None:
    clock = Clock(1_800_000_000.0 - 1_800_000_000.0 % seconds)  # start of a window
    b = _budgets(tmp_path / "b.json", clock, {window: 3})
    assert [_one(b, "alice") for _ in range(3)] == [None, None, None]
    refused = _one(b, "alice")
    assert refused is not None
    assert (refused.scope, refused.window, refused.limit, refused.first) == ("employee", window, 3, True)
    again = _one(b, "alice")
    assert again is not None
    assert again.first is False  # the event is raised once per window
    assert _one(b, "bob") is None  # employees are counted apart
    clock.now += seconds - 1
    assert _one(b, "alice") is not None  # still the same window
    clock.now += 1
    assert _one(b, "alice") is None  # a new window


def test_global_budget_counts_everyone(tmp_path: Path) -> None:
    b = _budgets(tmp_path / "b.json", Clock(), {"day": 100}, {"minute": 4})
    assert [_one(b, who) for who in ("a", "b", "c", "d")] == [None] * 4
    refused = _one(b, "e")
    assert refused is not None
    assert (refused.scope, refused.window) == ("global", "minute")


def test_a_refusal_is_not_counted(tmp_path: Path) -> None:
    b = _budgets(tmp_path / "b.json", Clock(), {"minute": 2}, {"minute": 3})
    for _ in range(5):
        _one(b, "alice")
    assert _one(b, "bob") is None  # alice's refused attempts did not eat the global budget


def test_restart_loads_reservations_as_spent(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    clock = Clock()
    b = _budgets(path, clock, {"day": 100})  # chunk of 5
    assert _one(b, "alice") is None
    saved = json.loads(path.read_text())["reserved"]
    assert saved == [["employee", "alice", "day", int(clock.now // 86400), 5]]
    # A crash after one decrypt: the other four reserved ones count as spent.
    again = _budgets(path, clock, {"day": 100})
    assert again.usage("alice") == {"employee_day": 5}
    # Reserving goes on from there.
    for _ in range(95):
        assert _one(again, "alice") is None
    assert _one(again, "alice") is not None


def test_restart_after_the_window_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    clock = Clock()
    b = _budgets(path, clock, {"minute": 1})
    _one(b, "alice")
    clock.now += 60
    assert _one(_budgets(path, clock, {"minute": 1}), "alice") is None


def test_write_failure_fails_closed(tmp_path: Path) -> None:
    b = _budgets(tmp_path / "missing-dir" / "b.json", Clock(), {"minute": 10})
    with pytest.raises(BudgetWriteFailed):
        _one(b, "alice")


@pytest.mark.parametrize("bad", [{"week": 1}, {"minute": 0}, {"minute": -1}, {"minute": "5"}])
def test_bad_limits_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="bad budget"):
        Limits(employee=bad, overall={})  # type: ignore[arg-type]


def test_daemon_budgets_refuse_at_threshold_and_survive_restart(keyd_factory: object) -> None:
    # Day windows only, so the test cannot straddle a minute boundary.
    k: Keyd = keyd_factory(  # type: ignore[operator]
        extra=[
            "--budget=employee.day=5",
            "--budget=global.day=8",
            "--budget=employee.minute=1000",
            "--budget=employee.hour=1000",
            "--budget=global.minute=1000",
            "--budget=global.hour=1000",
        ]
    )
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    k.unseal(key)
    ctx = Context("r1", "pan")
    with k.client() as c:
        blob = c.encrypt(b"secret", context=ctx, actor="alice", purpose="t")
        for _ in range(5):
            assert c.decrypt(blob, context=ctx, actor="alice", purpose="reveal") == b"secret"
        with pytest.raises(QuotaExceeded) as info:
            c.decrypt(blob, context=ctx, actor="alice", purpose="reveal")
        assert info.value.reason == "employee_day"
        # Rewrap and encrypt are not decrypts: still allowed.
        c.rewrap(blob, context=ctx, actor="alice", purpose="rotate")
        for _ in range(3):
            c.decrypt(blob, context=ctx, actor="bob", purpose="reveal")
        with pytest.raises(QuotaExceeded) as info:
            c.decrypt(blob, context=ctx, actor="carol", purpose="reveal")
        assert info.value.reason == "global_day"
    exceeded = [e for e in k.events() if e["event"] == "budget_exceeded"]
    assert [(e["scope"], e["actor"]) for e in exceeded] == [("employee", "alice"), ("global", "carol")]
    # A crash cannot reset the budgets.
    k.kill()
    k.start()
    k.unseal(key)
    with k.client() as c:
        for who, reason in (("alice", "employee_day"), ("dave", "global_day")):
            with pytest.raises(QuotaExceeded) as info:
                c.decrypt(blob, context=ctx, actor=who, purpose="reveal")
            assert info.value.reason == reason
    assert oct(os.stat(k.state_dir / "budgets.json").st_mode & 0o777) == "0o600"


def test_daemon_batch_past_threshold_fails_item_by_item(keyd_factory: object) -> None:
    k: Keyd = keyd_factory(extra=["--budget=employee.day=3", "--budget=global.day=1000"])  # type: ignore[operator]
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    k.unseal(key)
    ctx = Context("r1", "pan")
    with k.client() as c:
        blob = c.encrypt(b"s", context=ctx, actor="alice", purpose="t")
        out = c.decrypt_batch([(ctx, blob)] * 5, actor="alice", purpose="export")
    assert out[:3] == [b"s"] * 3
    assert all(isinstance(o, QuotaExceeded) for o in out[3:])
