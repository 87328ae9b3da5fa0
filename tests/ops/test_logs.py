"""The log check through a whole watchdog pass: new data alerts (counts only), rotation does not."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.ops.conftest import queued

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _pass(settings: Settings, engine: sa.Engine) -> None:
    run_pass(settings, state=StateDir(settings.state_dir), engine=engine, now=NOW, only=("logs",))


def test_append_alerts_with_a_count_and_never_the_line(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    err = tmp_path / "error.log"
    err.write_text("")
    s = make_settings(logs={"apache_error": str(err)})
    _pass(s, engine)
    assert queued(engine) == []
    with err.open("a") as fh:
        fh.write("[core:error] secret-looking 4111111111111111\n[core:error] second\n")
    _pass(s, engine)
    assert queued(engine) == [("ops.log_new", "apache_error", "lines=2")]
    _pass(s, engine)
    assert len(queued(engine)) == 1  # nothing new, nothing sent


def test_rotation_gives_no_false_alert_and_misses_no_line(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    log = tmp_path / "syslog"
    log.write_text("boot\n")
    s = make_settings(logs={"syslog": str(log)})
    _pass(s, engine)
    os.rename(log, tmp_path / "syslog.1")
    log.write_text("")
    _pass(s, engine)
    assert queued(engine) == []  # a rotation alone is not news, and "boot" is not read twice
    with log.open("a") as fh:
        fh.write("written before the rotation\n")
    os.rename(tmp_path / "syslog.1", tmp_path / "syslog.2")
    os.rename(log, tmp_path / "syslog.1")
    log.write_text("written after the rotation\n")
    _pass(s, engine)
    assert queued(engine) == [("ops.log_new", "syslog", "lines=2")]  # both, once each
    _pass(s, engine)
    assert len(queued(engine)) == 1


def test_modsecurity_denials_are_counted(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    err = tmp_path / "error.log"
    err.write_text("")
    s = make_settings(logs={"apache_error": str(err)})
    _pass(s, engine)
    with err.open("a") as fh:
        for rule in ("942100", "949110"):
            fh.write(f'[security2:error] ModSecurity: Access denied with code 403 (phase 2). [id "{rule}"]\n')
    _pass(s, engine)
    assert queued(engine) == [
        ("ops.log_new", "apache_error", "lines=2"),
        ("ops.modsecurity_blocked", "apache_error", "denied=2"),
    ]


def test_an_unreadable_log_is_an_alert_not_a_pass(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    s = make_settings(logs={"syslog": str(tmp_path / "missing")})
    _pass(s, engine)
    assert queued(engine) == [("ops.check_failed", "logs", "syslog: No such file or directory")]


def test_routine_lines_the_admin_listed_are_not_news(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    log = tmp_path / "syslog"
    log.write_text("")
    s = make_settings(logs={"syslog": str(log)}, log_ignore=[r" CRON\[\d+\]: \(root\) CMD "])
    _pass(s, engine)
    with log.open("a") as fh:
        fh.write("Nov 28 10:00:01 vault CRON[123]: (root) CMD (run-parts /etc/cron.hourly)\n")
    _pass(s, engine)
    assert queued(engine) == []
    with log.open("a") as fh:
        fh.write("Nov 28 10:00:01 vault CRON[124]: (root) CMD (run-parts /etc/cron.hourly)\n")
        fh.write("Nov 28 10:00:02 vault sshd[99]: Accepted publickey for root\n")
    _pass(s, engine)
    assert queued(engine) == [("ops.log_new", "syslog", "lines=1")]
