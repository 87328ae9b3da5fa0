"""Remote logging with two real rsyslogd on loopback (sender and log host, mutual TLS with a test CA):
lines arrive; a line deleted or changed locally is detected; a receiver outage loses nothing; the
audit chain head seen remotely anchors the database's chain; a stranger's certificate is refused."""

from __future__ import annotations

import grp
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.checks.remote import compare
from ops.rsyslog import PRODUCTION_RECEIVER, PRODUCTION_SENDER, Receiver, Sender
from ops.runner import run_pass
from ops.settings import Settings, parse
from ops.state import StateDir
from tests.fixtures.pki import TestCA
from tests.ops.conftest import queued
from tests.ops.rsyslog_harness import Rsyslogd, wait_for
from tests.support import free_port, need_binary
from webapp.audit.service import AuditEntry, append, to_syslog
from webapp.db.tables import audit_head, audit_log
from webapp.events import Event

ROOT = Path(__file__).resolve().parents[2]
SENDER_HOST = "vault-test"
READER_GROUP = "nogroup"  # exists on every Debian; rsyslog refuses an unknown group


def test_shipped_configs_are_the_current_rendering_and_valid() -> None:
    assert (ROOT / "ops/rsyslog/60-strongroom-forward.conf").read_text() == PRODUCTION_SENDER.render()
    assert (ROOT / "ops/rsyslog/loghost-strongroom.conf").read_text() == PRODUCTION_RECEIVER.render()


@pytest.mark.parametrize("value", ['x" ; action(type="omfile"', "a b", "line\nbreak", ""])
def test_config_values_cannot_inject(value: str) -> None:
    with pytest.raises(ValueError, match="unsafe value"):
        Sender("h", 1, value, "/ca", "/c", "/k", "/l").render()


@dataclass
class Pair:
    sender: Rsyslogd
    receiver: Rsyslogd
    local_copy: Path
    remote_copy: Path

    def remote_lines(self) -> list[str]:
        return self.remote_copy.read_text().splitlines() if self.remote_copy.exists() else []

    def local_lines(self) -> list[str]:
        return self.local_copy.read_text().splitlines() if self.local_copy.exists() else []


def _pki(base: Path, ca: TestCA, name: str, *, server: bool) -> tuple[str, str]:
    cert, key = ca.issue(name, server=server).write(base, name)
    return str(cert), str(key)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    binary = need_binary("rsyslogd")
    ca = TestCA("Strongroom rsyslog test CA")
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.pem").write_bytes(ca.pem)
    s_cert, s_key = _pki(pki, ca, "vault.test", server=False)
    r_cert, r_key = _pki(pki, ca, "localhost", server=True)  # SAN localhost/127.0.0.1
    port = free_port()
    local_copy = tmp_path / "sender" / "forwarded.log"
    receiver = Rsyslogd(
        binary,
        tmp_path / "receiver",
        # The pull account's group (production: strongroom-logpull) may read, never write.
        Receiver(
            port, "vault.test", str(pki / "ca.pem"), r_cert, r_key, str(tmp_path / "remote"), READER_GROUP
        ).render(),
        "loghost-test",
    )
    sender = Rsyslogd(
        binary,
        tmp_path / "sender",
        Sender("127.0.0.1", port, "localhost", str(pki / "ca.pem"), s_cert, s_key, str(local_copy)).render(),
        SENDER_HOST,
        with_socket=True,
    )
    for inst in (receiver, sender):
        inst.base.mkdir(parents=True, exist_ok=True)
        res = inst.check()
        assert res.returncode == 0, res.stdout + res.stderr
    receiver.start()
    sender.start()
    try:
        yield Pair(sender, receiver, local_copy, tmp_path / "remote" / SENDER_HOST / "forwarded.log")
    finally:
        sender.close_loggers()
        sender.stop()
        receiver.stop()


def _settings(pair: Pair, tmp_path: Path, db_url: str) -> Settings:
    return parse(
        {
            "state_dir": str(tmp_path / "state"),
            "database_url": db_url,
            "remote_local_log": str(pair.local_copy),
            "remote_copy": str(pair.remote_copy),
            "remote_grace_seconds": 1,
        },
        environ={},
    )


def _check(settings: Settings, engine: sa.Engine) -> None:
    later = datetime.now(UTC) + timedelta(seconds=5)  # everything sent so far is past the grace period
    run_pass(settings, state=StateDir(settings.state_dir), engine=engine, now=later, only=("remote",))


def _audit(engine: sa.Engine, logger: logging.Logger, n: int) -> None:
    with engine.begin() as conn:
        done = append(
            conn,
            [AuditEntry(Event.PAGE_VIEW, "success", actor="alice", resource=f"/r/{i}") for i in range(n)],
            now=datetime.now(UTC),
        )
    to_syslog(logger, done)


def _arrived(pair: Pair, n: int) -> None:
    wait_for(lambda: len(pair.remote_lines()) >= n and len(pair.local_lines()) >= n, what=f"{n} lines")


def test_lines_arrive_identical_and_tampering_is_detected(
    pair: Pair, tmp_path: Path, db_url: str, engine: sa.Engine
) -> None:
    logger = pair.sender.logger("audit")
    _audit(engine, logger, 5)
    _arrived(pair, 5)
    # Identical lines (the log host may hold one twice: rsyslog delivers at least once).
    assert set(pair.remote_lines()) == set(pair.local_lines())
    assert len(pair.local_lines()) == 5
    assert all(" vault-test strongroom - audit seq=" in line for line in pair.remote_lines())
    for path, mode in ((pair.remote_copy, 0o640), (pair.remote_copy.parent, 0o750)):
        st = path.stat()
        assert (grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o777) == (READER_GROUP, mode)
    s = _settings(pair, tmp_path, db_url)
    _check(s, engine)
    assert queued(engine) == []

    # An intruder deletes one local line and edits another.
    lines = pair.local_lines()
    edited = [lines[0], lines[1].replace("actor=alice", "actor=bob"), *lines[3:]]
    pair.local_copy.write_text("".join(f"{ln}\n" for ln in edited))
    _check(s, engine)
    assert queued(engine) == [
        ("ops.remote_log_mismatch", str(pair.local_copy), "lines_missing_or_changed_here=2"),
        ("ops.remote_log_behind", str(pair.remote_copy), "lines_not_at_remote=1"),
    ]


def test_deleting_the_newest_audit_rows_is_caught_by_the_remote_head(
    pair: Pair, tmp_path: Path, db_url: str, engine: sa.Engine
) -> None:
    logger = pair.sender.logger("audit")
    _audit(engine, logger, 4)
    _arrived(pair, 4)
    s = _settings(pair, tmp_path, db_url)
    _check(s, engine)
    assert queued(engine) == []
    # Delete the newest two rows and rewind the head: the chain alone still verifies.
    with engine.begin() as conn:
        prev = conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == 2)).scalar_one()
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq > 2))
        conn.execute(sa.update(audit_head).values(seq=2, hash=prev))
    _check(s, engine)
    rows = queued(engine)
    assert [(e, r) for e, r, _ in rows] == [("ops.audit_head_mismatch", "audit_log")]
    assert rows[0][2].startswith("remote_head=4 db_head=2")


def test_a_receiver_outage_loses_nothing(pair: Pair) -> None:
    logger = pair.sender.logger("events")
    logger.info("before the outage")
    _arrived(pair, 1)
    pair.receiver.stop()
    for i in range(20):
        logger.info("during the outage %d", i)
    wait_for(lambda: len(pair.local_lines()) == 21, what="local copies")
    time.sleep(3)  # the sender notices and retries at least once
    pair.receiver.start()
    logger.info("after the outage")
    _arrived(pair, 22)
    wait_for(lambda: len({ln.split(" ", 4)[4] for ln in pair.remote_lines()}) >= 22, what="every line")
    remote = {ln.split(" ", 4)[4] for ln in pair.remote_lines()}
    assert remote == {"before the outage", "after the outage"} | {f"during the outage {i}" for i in range(20)}


@pytest.mark.xfail(
    strict=True,
    reason="known loss, measured: rsyslog stopped while the log host is down drops the few messages its "
    "forwarding action holds in flight (2-3 here, also with a dequeue batch of 1); what waits in the disk "
    "queue survives. Upstream: rsyslog/rsyslog#3820 and #2710 (open). The remote check reports the loss "
    "as ops.remote_log_behind.",
)
def test_a_sender_restart_during_an_outage_loses_nothing(pair: Pair) -> None:
    logger = pair.sender.logger("events")
    logger.info("before the outage")
    _arrived(pair, 1)
    pair.receiver.stop()
    for i in range(20):
        logger.info("during the outage %d", i)
    wait_for(lambda: len(pair.local_lines()) == 21, what="local copies")
    pair.sender.close_loggers()
    pair.sender.stop()
    pair.sender.start()
    pair.sender.logger("events-again").info("after the sender restart")
    pair.receiver.start()
    _arrived(pair, 2)
    time.sleep(5)
    remote = {ln.split(" ", 4)[4] for ln in pair.remote_lines()}
    assert remote == {"before the outage", "after the sender restart"} | {
        f"during the outage {i}" for i in range(20)
    }


def test_a_sender_with_a_strangers_certificate_is_refused(pair: Pair, tmp_path: Path) -> None:
    stranger_ca = TestCA("Someone else")
    pki = tmp_path / "stranger"
    pki.mkdir()
    (pki / "ca.pem").write_bytes(stranger_ca.pem)
    cert, key = _pki(pki, stranger_ca, "vault.test", server=False)  # the right name, the wrong CA
    port = int(pair.receiver.body.split('input(type="imrelp" port="')[1].split('"')[0])
    rogue = Rsyslogd(
        pair.sender.binary,
        tmp_path / "rogue",
        # It trusts the real log host (so only the log host's refusal can stop it).
        Sender(
            "127.0.0.1",
            port,
            "localhost",
            str(tmp_path / "pki" / "ca.pem"),
            cert,
            key,
            str(tmp_path / "rogue" / "forwarded.log"),
        ).render(),
        "rogue-host",
        with_socket=True,
    )
    rogue.base.mkdir()
    rogue.start()
    try:
        rogue.logger("x").info("forged line")
        wait_for(lambda: (tmp_path / "rogue" / "forwarded.log").exists(), what="the rogue's local copy")
        pair.sender.logger("y").info("a genuine line")
        _arrived(pair, 1)
    finally:
        rogue.close_loggers()
        rogue.stop()
    assert not (tmp_path / "remote" / "rogue-host").exists()
    assert all("forged" not in ln for ln in pair.remote_lines())


def test_compare_counts_within_the_window() -> None:
    t0 = "2026-11-28T10:00:00.000001+00:00 h strongroom: a"
    t1 = "2026-11-28T10:00:01.000001+00:00 h strongroom: b"
    t2 = "2026-11-28T10:00:09.000001+00:00 h strongroom: too new"
    start = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    until = datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)
    assert compare([t0, t1, t2], [t0, t1], start=start, until=until) == (0, 0)
    assert compare([t1], [t0, t1], start=start, until=until) == (1, 0)
    assert compare([t0], [t0, t1, t1], start=start, until=until) == (1, 0)
    assert compare([t0, t1], [t0, t1, t1], start=start, until=until) == (0, 0)  # delivered twice
    assert compare(["not a log line"], [], start=start, until=until) == (0, 0)


def test_the_renderer_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ops.rsyslog.__main__ import cli

    args = ["sender", "--target", "logs.corp.example", "--permitted-peer", "logs.corp.example"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert (
        res.output
        == Sender(
            "logs.corp.example",
            PRODUCTION_SENDER.port,
            "logs.corp.example",
            PRODUCTION_SENDER.ca_file,
            PRODUCTION_SENDER.cert_file,
            PRODUCTION_SENDER.key_file,
            PRODUCTION_SENDER.local_copy,
        ).render()
    )
    hostile = 'x"]) action(type="omfile" file="/etc/passwd'
    bad = CliRunner().invoke(cli, ["receiver", "--permitted-peer", hostile])
    assert bad.exit_code == 1
    assert "unsafe value" in bad.output
