"""ops/checks/logsize.py: a log past its bound alarms, once while it stays there; small and missing
logs do not."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ops.checks import Context, logsize
from ops.settings import Settings


def _ctx(settings: Settings, limit: int) -> Context:
    object.__setattr__(settings, "log_max_bytes", limit)
    return Context(settings=settings, now=datetime.now(UTC), state=None, baseline=None)


@pytest.mark.parametrize(
    ("size", "alarms"),
    [(0, 0), (999, 0), (1000, 0), (1001, 1), (5000, 1)],
)
def test_a_log_past_the_bound_alarms(
    tmp_path: Path, make_settings: Callable[..., Settings], size: int, alarms: int
) -> None:
    log = tmp_path / "strongroom-error.log"
    log.write_bytes(b"x" * size)
    s = make_settings(logs={"apache_error": str(log)})
    got = logsize.run(_ctx(s, 1000)).findings
    assert len(got) == alarms
    for f in got:
        assert f.resource == "apache_error"
        assert f.detail == f"bytes={size} limit=1000"
        assert f.key == "logsize:apache_error"  # a lasting condition: one alarm while it lasts


def test_missing_logs_and_the_access_log(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    access = tmp_path / "review.log"
    access.write_bytes(b"y" * 2000)
    s = make_settings(logs={"gone": str(tmp_path / "missing.log")}, access_log=str(access))
    got = logsize.run(_ctx(s, 1000)).findings
    assert [(f.resource, f.detail) for f in got] == [("access_log", "bytes=2000 limit=1000")]


def test_the_default_bound(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    s = make_settings(logs={"small": str(tmp_path / "a.log")})
    (tmp_path / "a.log").write_bytes(b"z")
    ctx = Context(settings=s, now=datetime.now(UTC), state=None, baseline=None)
    assert logsize.run(ctx).findings == []
    assert logsize.DEFAULT_MAX_BYTES >= 50 * 1024 * 1024  # above what logrotate keeps
