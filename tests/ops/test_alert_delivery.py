"""Alerts end to end: a watchdog pass queues them, the web app's mailer (`flask --app webapp mail send`,
a real subprocess) delivers them to a real SMTP server (aiosmtpd). Mail server down -> the alerts stay
pending; up again -> delivered, and only once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path

import sqlalchemy as sa
from aiosmtpd.controller import Controller

from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.ops.conftest import mail_send
from tests.support import free_port
from webapp.db.tables import outbox


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received.append((list(envelope.rcpt_tos), envelope.content))  # type: ignore[attr-defined]
        return "250 OK"


def _mail_send(db_url: str, instance: Path, port: int) -> subprocess.CompletedProcess[str]:
    return mail_send(
        {
            "STRONGROOM_DATABASE_URL": db_url,
            "STRONGROOM_INSTANCE_PATH": str(instance),
            "STRONGROOM_SECRET_KEY": "x" * 40,
            "STRONGROOM_SMTP_HOST": "127.0.0.1",
            "STRONGROOM_SMTP_PORT": str(port),
            "STRONGROOM_SMTP_STARTTLS": "auto",
            "STRONGROOM_SMTP_TIMEOUT": "5",
            "STRONGROOM_MAIL_FROM": "vault@example.internal",
            "STRONGROOM_ALERT_TO": "admins@example.internal",
        }
    )


def _pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
            ).scalar_one()
        )


def test_mail_server_down_then_up_delivers_once(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine, db_url: str
) -> None:
    log = tmp_path / "error.log"
    log.write_text("")
    s = make_settings(logs={"apache_error": str(log)}, aide_config=str(tmp_path / "missing.conf"))
    now = datetime.now(UTC)
    run_pass(s, state=StateDir(s.state_dir), engine=engine, now=now, only=("logs",))
    log.write_text("[core:error] something\n")
    run_pass(s, state=StateDir(s.state_dir), engine=engine, now=now, only=("logs", "integrity"))
    assert _pending(engine) == 2  # ops.log_new, ops.check_failed

    port = free_port()  # nothing listens there: the company's mail server is down
    down = _mail_send(db_url, tmp_path / "instance", port)
    assert down.returncode != 0, down.stdout + down.stderr
    assert _pending(engine) == 2
    with engine.connect() as conn:
        attempts = conn.execute(sa.select(outbox.c.attempts)).scalars().all()
    assert attempts == [1, 1]  # the mailer tried, failed, and kept them

    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        up = _mail_send(db_url, tmp_path / "instance", port)
        assert up.returncode == 0, up.stdout + up.stderr
        again = _mail_send(db_url, tmp_path / "instance", port)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        controller.stop()
    assert _pending(engine) == 0
    subjects = sorted(str(message_from_bytes(raw)["Subject"]) for _, raw in sink.received)
    assert len(subjects) == 2, subjects  # one mail per event name, and nothing twice
    assert any("ops.log_new" in subj for subj in subjects)
    assert any("ops.check_failed" in subj for subj in subjects)
    for rcpts, raw in sink.received:
        assert rcpts == ["admins@example.internal"]
        body = raw.decode()
        assert "something" not in body  # the log line never leaves the server
        assert "missing.conf" not in body
