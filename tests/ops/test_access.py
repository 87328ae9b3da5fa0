"""Access review: the strict line parser, thresholds per certificate and in total, the daily report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from ops.checks.access import Request, daily_report, parse_line
from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from ops.watch import cli
from tests.ops.conftest import queued

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ALICE = "2026-11-28T10:00:01+0000\t1A2B3C\talice\tGET\t200\n"
BOB = "2026-11-28T10:00:02+0000\t4D5E\tbob\tPOST\t303\n"


def test_a_good_line_parses() -> None:
    assert parse_line(ALICE.rstrip("\n").encode()) == Request("2026-11-28", "1A2B3C alice", "GET", 200)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"", "empty"),
        (b"2026-11-28T10:00:01+0000\t1A2B\talice\tGET", "a field missing"),
        (b"2026-11-28T10:00:01+0000\t1A2B\talice\tGET\t200\textra", "a field too many"),
        (b"2026-11-28 10:00:01\t1A2B\talice\tGET\t200", "not the review time format"),
        (b"2026-11-28T10:00:01+0000\tZZZZ\talice\tGET\t200", "serial not hex"),
        (b"2026-11-28T10:00:01+0000\t1A2B\t\tGET\t200", "empty common name"),
        (b"2026-11-28T10:00:01+0000\t1A2B\talice\tget\t200", "method not upper case"),
        (b"2026-11-28T10:00:01+0000\t1A2B\talice\tGET\t20", "status not three digits"),
        (b"2026-11-28T10:00:01+0000\t1A2B\tal\x1bice\tGET\t200", "control character in the name"),
        (b'127.0.0.1 - - [28/Nov/2026:10:00:01 +0000] "GET / HTTP/1.1" 200 5', "Apache's common format"),
        (b"2026-11-28T10:00:01+0000\t1A2B\t" + b"a" * 2000 + b"\tGET\t200", "over the line limit"),
    ],
)
def test_hostile_or_foreign_lines_are_refused(line: bytes, why: str) -> None:
    assert parse_line(line) is None, why


def test_a_request_refused_before_its_method_was_read_is_still_counted() -> None:
    # Apache logs "-" for STRONGROOM_METHOD when it refused the request before reading it whole.
    line = b"2026-11-28T10:00:01+0000\t1A2B\talice\t-\t400"
    assert parse_line(line) == Request("2026-11-28", "1A2B alice", "-", 400)


def _pass(settings: Settings, engine: sa.Engine) -> None:
    run_pass(settings, state=StateDir(settings.state_dir), engine=engine, now=NOW, only=("access",))


def test_over_the_threshold_alerts_and_the_report_names_the_certificate(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine, db_url: str
) -> None:
    log = tmp_path / "access.log"
    log.write_text(ALICE)  # before the first review: not counted
    s = make_settings(access_log=str(log), access_per_cert=3, access_total=10)
    _pass(s, engine)
    with log.open("a") as fh:
        fh.write(ALICE * 3 + BOB * 2)
    _pass(s, engine)
    assert queued(engine) == []  # 3 is not over 3
    with log.open("a") as fh:
        fh.write(ALICE * 4 + BOB)
    _pass(s, engine)
    assert queued(engine) == [("ops.access_threshold", "1A2B3C alice", "requests=4 threshold=3")]
    with log.open("a") as fh:
        fh.write(BOB * 11)
    _pass(s, engine)
    assert queued(engine)[1:] == [
        ("ops.access_threshold", "4D5E bob", "requests=11 threshold=3"),
        ("ops.access_threshold", "total", "requests=11 threshold=10"),
    ]
    report = daily_report(StateDir(s.state_dir).load("check-access"), "2026-11-28")
    assert "       7  1A2B3C alice" in report
    assert "      14  4D5E bob" in report
    assert "      21  total" in report
    # The CLI writes the report file and queues a bare notification.
    config = tmp_path / "watch.toml"
    config.write_text(f'state_dir = "{s.state_dir}"\ndatabase_url = "{db_url}"\naccess_log = "{log}"\n')
    res = CliRunner().invoke(cli, ["--config", str(config), "report", "--day", "2026-11-28", "--notify"])
    assert res.exit_code == 0, res.output
    assert "1A2B3C alice" in res.output
    assert (s.state_dir / "reports" / "access-2026-11-28.txt").read_text() == report
    assert queued(engine)[-1] == ("ops.access_report", "2026-11-28", "-")


def test_malformed_lines_are_alerted(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    s = make_settings(access_log=str(log))
    _pass(s, engine)
    with log.open("a") as fh:
        fh.write(ALICE + "garbage\n")
    _pass(s, engine)
    assert queued(engine) == [("ops.check_failed", "access", "malformed_lines=1")]


@pytest.mark.parametrize(
    ("serial", "who"),
    [("030B0F", "30B0F alice"), ("30B0F", "30B0F alice"), ("00ff", "FF alice"), ("-", "- alice")],
)
def test_one_certificate_is_one_name_whatever_the_serial_padding(serial: str, who: str) -> None:
    """Apache writes serials as whole bytes: 030B0F and 30B0F are the same certificate."""
    line = f"2026-11-28T10:00:01+0000\t{serial}\talice\tGET\t200".encode()
    parsed = parse_line(line)
    assert parsed is not None
    assert parsed.who == who
