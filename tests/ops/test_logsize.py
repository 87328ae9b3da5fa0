"""ops/checks/logsize.py: a log past its bound alarms, once while it stays there; small and missing
logs do not."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ops.alerts import Alert
from ops.checks import Context, logsize
from ops.settings import Settings, SettingsError


def _ctx(settings: Settings) -> Context:
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
    s = make_settings(logs={"apache_error": str(log)}, log_max_bytes=1000)
    got = logsize.run(_ctx(s)).findings
    assert len(got) == alarms
    for f in got:
        assert f.alert is Alert.LOG_TOO_BIG
        assert f.resource == "apache_error"
        assert f.detail == f"bytes={size} limit=1000"
        assert f.key == "logsize:apache_error"  # a lasting condition: one alarm while it lasts


def test_missing_logs_and_the_access_log(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    access = tmp_path / "review.log"
    access.write_bytes(b"y" * 2000)
    s = make_settings(
        logs={"gone": str(tmp_path / "missing.log")}, access_log=str(access), log_max_bytes=1000
    )
    got = logsize.run(_ctx(s)).findings
    assert [(f.resource, f.detail) for f in got] == [("access_log", "bytes=2000 limit=1000")]


def test_logs_nobody_tails(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    audit = tmp_path / "strongroom-audit.log"
    audit.write_bytes(b"a" * 1001)
    s = make_settings(log_size_paths={"modsec_audit": str(audit)}, log_max_bytes=1000)
    assert [f.resource for f in logsize.run(_ctx(s)).findings] == ["modsec_audit"]


@pytest.mark.parametrize(
    "raw",
    [
        {"log_max_bytes": 0},
        {"log_max_bytes": -1},
        {"log_max_bytes": True},
        {"log_max_bytes": "200M"},
        {"log_size_paths": {"audit": "relative.log"}},
        {"log_size_paths": {"not a name": "/var/log/x"}},
        {"log_size_paths": ["/var/log/x"]},
    ],
)
def test_hostile_settings(make_settings: Callable[..., Settings], raw: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        make_settings(**raw)


def test_the_default_bound(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    s = make_settings(logs={"small": str(tmp_path / "a.log")})
    (tmp_path / "a.log").write_bytes(b"z")
    assert logsize.run(_ctx(s)).findings == []
    assert s.log_max_bytes >= 50 * 1024 * 1024  # above what logrotate keeps
