"""The same passes against the production database: a private MariaDB with the web app's own grants
(the watchdog needs INSERT on the outbox and SELECT on the audit tables, nothing more)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from ops.runner import run_pass
from ops.settings import parse
from ops.state import StateDir
from tests.fixtures.mariadb import mariadb  # noqa: F401 - the session fixture
from tests.ops.conftest import queued
from tests.webapp.conftest import MariaBackend, maria_backend  # noqa: F401 - the session fixture
from webapp.audit.service import AuditEntry, append
from webapp.db.engine import make_engine
from webapp.events import Event


def test_alerts_and_the_audit_anchor_on_mariadb(tmp_path: Path, maria_backend: MariaBackend) -> None:  # noqa: F811
    maria_backend.reset()
    engine = make_engine(maria_backend.url)
    try:
        now = datetime.now(UTC)
        with engine.begin() as conn:
            done = append(conn, [AuditEntry(Event.PAGE_VIEW, "success", actor="alice")] * 3, now=now)
        head = done[-1]
        log, local, remote = tmp_path / "syslog", tmp_path / "local.log", tmp_path / "remote.log"
        log.write_text("")
        stamp = now.isoformat(timespec="microseconds")
        line = f"{stamp} vault strongroom - audit seq={head.seq} hash={head.hash}\n"
        local.write_text(line)
        remote.write_text(line)
        s = parse(
            {
                "state_dir": str(tmp_path / "state"),
                "database_url": maria_backend.url,
                "logs": {"syslog": str(log)},
                "remote_local_log": str(local),
                "remote_copy": str(remote),
                "remote_grace_seconds": 1,
            },
            environ={},
        )
        later = now + timedelta(seconds=10)
        run_pass(s, state=StateDir(s.state_dir), engine=engine, now=later, only=("logs", "remote"))
        assert queued(engine) == []
        log.write_text("new\n")
        # The log host saw a record the database does not have: rows were deleted here.
        forged = f"{stamp} vault strongroom - audit seq=9 hash={'a' * 64}\n"
        remote.write_text(line + forged)
        local.write_text(line + forged)
        run_pass(s, state=StateDir(s.state_dir), engine=engine, now=later, only=("logs", "remote"))
        events = [(e, r) for e, r, _ in queued(engine)]
        assert events == [("ops.log_new", "syslog"), ("ops.audit_head_mismatch", "audit_log")]
    finally:
        engine.dispose()
