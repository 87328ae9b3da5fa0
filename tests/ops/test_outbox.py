"""The outbox check: alerts waiting too long mean the mail path is broken, and root hears it through
postfix's own sendmail (a real private postfix delivering to the admins' local mailboxes), once per
episode. The whole story: postfix down -> the real mailer fails and keeps the alerts -> the check's
notice waits in postfix's maildrop -> postfix back -> the notice and every alert arrive, once."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.checks import CheckFailed, Context
from ops.checks import outbox as check
from ops.postfix import Postfix
from ops.settings import Settings
from tests.deploy.test_webapp_env import environment_file, render
from tests.ops.conftest import mail_send
from tests.ops.postfix_harness import PrivatePostfix, local_users, private_postfix
from tests.ops.rsyslog_harness import wait_for
from tests.support import free_port
from webapp import outbox
from webapp.db.tables import outbox as outbox_table

HOST = "vault.example.internal"
NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
BOUND = timedelta(seconds=Settings.model_fields["outbox_stuck_seconds"].default)
SUBJECT = "Subject: Strongroom: alerts are not being mailed"


@pytest.fixture
def postfix_local() -> Iterator[tuple[PrivatePostfix, tuple[str, str]]]:
    tag = secrets.token_hex(3)
    users = (f"sra{tag}", f"srb{tag}")
    config = Postfix(myhostname=HOST, admins=tuple(f"{u}@{HOST}" for u in users), port=free_port())
    with local_users(*users), private_postfix(config) as pf:
        yield pf, users


def mailbox(pf: PrivatePostfix, user: str) -> str:
    path = pf.mail_dir / user
    return path.read_text(errors="replace") if path.exists() else ""


def _ctx(settings: Settings, engine: sa.Engine, now: datetime, state: dict[str, object] | None) -> Context:
    return Context(settings=settings, now=now, state=state, baseline=None, engine=engine)


def _enqueue(engine: sa.Engine, when: datetime, event: str = "ops.port_new") -> None:
    with engine.begin() as conn:
        outbox.enqueue(conn, event, now=when, resource="tcp 0.0.0.0:4444", detail="pid=4242")


@pytest.mark.parametrize(
    ("age", "stuck"),
    [(BOUND - timedelta(seconds=1), False), (BOUND, True), (BOUND + timedelta(hours=5), True)],
)
def test_only_rows_older_than_the_bound_count(
    make_settings: Callable[..., Settings], engine: sa.Engine, age: timedelta, stuck: bool
) -> None:
    _enqueue(engine, NOW - age)
    assert check.stuck_count(engine, (NOW - BOUND).replace(tzinfo=None)) == int(stuck)


def test_sent_rows_never_count(make_settings: Callable[..., Settings], engine: sa.Engine) -> None:
    _enqueue(engine, NOW - 2 * BOUND)
    with engine.begin() as conn:
        ids = [r.id for r in outbox.pending(conn)]
        outbox.mark_sent(conn, ids, now=NOW)
    result = check.run(_ctx(make_settings(), engine, NOW, None))
    assert result.state == {"stuck": False}


def test_root_hears_it_once_per_episode(
    postfix_local: tuple[PrivatePostfix, tuple[str, str]],
    make_settings: Callable[..., Settings],
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pf, users = postfix_local
    monkeypatch.setenv("MAIL_CONFIG", str(pf.conf))  # the host's /usr/sbin/sendmail, this postfix
    settings = make_settings()
    _enqueue(engine, NOW - BOUND - timedelta(minutes=1))
    state = check.run(_ctx(settings, engine, NOW, None)).state
    assert state == {"stuck": True}
    wait_for(lambda: all(SUBJECT in mailbox(pf, u) for u in users), timeout=30, what="notice: " + pf.log())
    # Still stuck next pass: no second mail.
    state = check.run(_ctx(settings, engine, NOW + timedelta(minutes=5), state)).state
    assert state == {"stuck": True}
    # Delivered at last, then stuck again later: a new episode, a new mail.
    with engine.begin() as conn:
        outbox.mark_sent(conn, [r.id for r in outbox.pending(conn)], now=NOW)
    state = check.run(_ctx(settings, engine, NOW + timedelta(minutes=10), state)).state
    assert state == {"stuck": False}
    _enqueue(engine, NOW)
    state = check.run(_ctx(settings, engine, NOW + BOUND, state)).state
    assert state == {"stuck": True}
    wait_for(lambda: mailbox(pf, users[0]).count(SUBJECT) == 2, timeout=30, what="second notice")
    for user in users:
        text = mailbox(pf, user)
        assert text.count(SUBJECT) == 2
        assert "4444" not in text  # never the rows' details
        assert "4242" not in text
        assert "1 alert(s) have waited more than 15 minutes" in text


def test_a_failing_sendmail_is_a_failed_check_and_is_retried(
    make_settings: Callable[..., Settings], engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check, "SENDMAIL", "/bin/false")  # a real program that fails
    _enqueue(engine, NOW - 2 * BOUND)
    with pytest.raises(CheckFailed, match="sendmail failed: exit 1"):
        check.run(_ctx(make_settings(), engine, NOW, None))
    monkeypatch.setattr(check, "SENDMAIL", "/nonexistent/sendmail")
    with pytest.raises(CheckFailed, match="FileNotFoundError"):
        check.run(_ctx(make_settings(), engine, NOW, None))


def test_no_database_is_a_failed_check(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(CheckFailed, match="no database"):
        check.run(Context(settings=make_settings(), now=NOW, state=None, baseline=None, engine=None))


def _mail_send(
    db_url: str, instance: Path, port: int, admins: tuple[str, ...]
) -> subprocess.CompletedProcess[str]:
    """The real mailer with deploy/webapp.env.in as the install command fills it; only the database,
    the instance and the listener's port (a free one here, 25 on the server) differ."""
    filled = environment_file(
        render({"SECRET_KEY": "x" * 64, "MAIL_FROM": f"strongroom@{HOST}", "ALERT_TO": ",".join(admins)})
    )
    return mail_send(
        {
            **filled,
            "STRONGROOM_DATABASE_URL": db_url,
            "STRONGROOM_INSTANCE_PATH": str(instance),
            "STRONGROOM_SMTP_PORT": str(port),
            "STRONGROOM_SMTP_TIMEOUT": "5",
        }
    )


def test_postfix_down_then_back(
    postfix_local: tuple[PrivatePostfix, tuple[str, str]],
    make_settings: Callable[..., Settings],
    engine: sa.Engine,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pf, users = postfix_local
    admins = tuple(f"{u}@{HOST}" for u in users)
    monkeypatch.setenv("MAIL_CONFIG", str(pf.conf))
    port = pf.smtp_port
    subprocess.run(["postfix", "-c", str(pf.conf), "stop"], check=True, env=pf.env, capture_output=True)
    created = datetime.now(UTC) - BOUND - timedelta(minutes=1)
    _enqueue(engine, created, "ops.port_new")
    _enqueue(engine, created, "ops.keyd_sealed")
    down = _mail_send(db_url, tmp_path / "instance", port, admins)
    assert down.returncode == 1, down.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.select(outbox_table.c.attempts)).scalars().all() == [1, 1]
    # The check's notice goes into postfix's maildrop even while postfix is down.
    state = check.run(_ctx(make_settings(), engine, datetime.now(UTC), None)).state
    assert state == {"stuck": True}
    subprocess.run(["postfix", "-c", str(pf.conf), "start"], check=True, env=pf.env, capture_output=True)
    wait_for(lambda: all(SUBJECT in mailbox(pf, u) for u in users), timeout=60, what="notice: " + pf.log())
    up = _mail_send(db_url, tmp_path / "instance", port, admins)
    assert up.returncode == 0, up.stderr
    again = _mail_send(db_url, tmp_path / "instance", port, admins)
    assert again.returncode == 0, again.stderr
    wait_for(
        lambda: all(mailbox(pf, u).count("Subject: Strongroom: ops.") == 2 for u in users),
        timeout=30,
        what="the alerts: " + pf.log(),
    )
    for user in users:
        text = mailbox(pf, user)
        assert text.count("Subject: Strongroom: ops.port_new") == 1
        assert text.count("Subject: Strongroom: ops.keyd_sealed") == 1
