"""`flask --app webapp mail send` (one pass) and `mail run --interval N` (a loop for systemd).

Exit status of `send`: 0 when everything pending was delivered (or nothing was pending), 1 when a
mail failed or the database is unreachable. Both commands exit 78 (EX_CONFIG) when the mail settings
are unusable: retrying cannot help, so strongroom-mail.service does not restart on it
(RestartPreventExitStatus=78) and its OnFailure= unit mails root through postfix instead.
`run` ends cleanly (exit 0) on SIGTERM or SIGINT after the pass in progress.

`prune` deletes outbox rows sent more than STRONGROOM_OUTBOX_RETENTION_DAYS (default 30) ago. It is
the only thing that deletes from the outbox: in production it connects as its own database user
(STRONGROOM_OUTBOX_PRUNE_DATABASE_URL, db/grants-prune.sql: DELETE on the outbox and nothing else);
its audit record goes through the web app's own user. strongroom-outbox-prune.timer runs it daily.
"""

from __future__ import annotations

import signal
import threading
from datetime import timedelta
from types import FrameType

import click
import sqlalchemy as sa
from flask import current_app

from webapp import outbox
from webapp.cli import Group, SettingsUnusable
from webapp.db.engine import make_engine
from webapp.events import Event
from webapp.mail.delivery import Mailer, PassResult
from webapp.mail.settings import MailConfigError, MailSettings
from webapp.mail.spool import Spool, SpoolError, spool_path
from webapp.services import services
from webapp.unit import Origin

mail_cli = Group("mail", help="Deliver the outbox's alerts by mail; prune what was sent.")
MAX_PASSES = 100  # `send` drains at most this many passes of PASS_LIMIT rows per event name


def _mailer() -> Mailer:
    try:
        settings = MailSettings.from_config(current_app.config)
    except MailConfigError as exc:
        raise SettingsUnusable(str(exc)) from None
    try:
        spool = Spool(spool_path(current_app.config, current_app.instance_path))
    except SpoolError as exc:
        raise SettingsUnusable(str(exc)) from None
    svc = services()
    return Mailer(engine=svc.engine, clock=svc.clock, settings=settings, units=svc.unit, spool=spool)


def _one_round(mailer: Mailer) -> PassResult | str:
    """The spool first (it needs no database), then outbox passes until nothing more is pending;
    a database failure comes back as its reason, after the spool went out."""
    try:
        total = mailer.deliver_spool()
    except OSError as exc:  # the spool directory unreadable: say so, still send the outbox
        click.echo(f"Error: alert spool unreadable ({type(exc).__name__})", err=True)
        total = PassResult(mails_failed=1, failures=["alert spool unreadable"])
    if total.spooled_sent:
        click.echo(
            f"spool: sent {total.spooled_sent} alert(s) raised while the database was unusable", err=True
        )
    try:
        for _ in range(MAX_PASSES):
            result = mailer.deliver()
            total.mails_sent += result.mails_sent
            total.events_sent += result.events_sent
            total.mails_failed += result.mails_failed
            total.events_failed += result.events_failed
            total.failures += result.failures
            total.skipped = total.skipped or result.skipped
            if not result.more or not result.ok:
                break
    except sa.exc.SQLAlchemyError as exc:
        return f"database error ({type(exc).__name__}); pending events stay pending"
    return total


def _summary(result: PassResult) -> str:
    if result.skipped:
        return "another mailer is running on this database; skipped"
    text = f"sent {result.mails_sent} mail(s) for {result.events_sent} event(s)"
    if result.mails_failed:
        text += f"; {result.mails_failed} mail(s) for {result.events_failed} event(s) failed, kept pending"
    return text


@mail_cli.command("send")
def send() -> None:
    """One delivery pass (repeated while more than one batch is pending)."""
    result = _one_round(_mailer())
    if isinstance(result, str):
        raise click.ClickException(result)
    for failure in result.failures:
        click.echo(f"failed: {failure}", err=True)
    if not result.ok:
        raise click.ClickException(_summary(result))
    click.echo(_summary(result))


@mail_cli.command("run")
@click.option("--interval", type=click.IntRange(1, 3600), default=60, show_default=True, help="Seconds.")
def run(interval: int) -> None:
    """Deliver every INTERVAL seconds until SIGTERM."""
    mailer = _mailer()
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(f"mailer running, a pass every {interval}s", err=True)
    while not stop.is_set():
        result = _one_round(mailer)
        if isinstance(result, str):
            click.echo(f"Error: {result}", err=True)
        elif result.mails_sent or not result.ok:
            for failure in result.failures:
                click.echo(f"failed: {failure}", err=True)
            click.echo(_summary(result), err=True)
        stop.wait(interval)
    click.echo("mailer stopped", err=True)


MAX_RETENTION_DAYS = 3650


def _retention_days() -> int:
    value = current_app.config.get("OUTBOX_RETENTION_DAYS", outbox.DEFAULT_RETENTION_DAYS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RETENTION_DAYS:
        raise SettingsUnusable(
            f"STRONGROOM_OUTBOX_RETENTION_DAYS must be an integer from 1 to {MAX_RETENTION_DAYS}"
        )
    return value


@mail_cli.command("prune")
def prune() -> None:
    """Delete outbox rows sent more than OUTBOX_RETENTION_DAYS ago (pending rows are never deleted)."""
    days = _retention_days()
    svc = services()
    url = current_app.config.get("OUTBOX_PRUNE_DATABASE_URL")
    engine = make_engine(str(url)) if url else svc.engine
    now = svc.clock.now()
    try:
        with engine.begin() as conn:
            deleted = outbox.prune(conn, now=now, retention=timedelta(days=days))
    except sa.exc.SQLAlchemyError as exc:
        raise click.ClickException(
            f"database error ({type(exc).__name__}); nothing pruned — "
            "check the database with `flask --app webapp health`"
        ) from None
    finally:
        if url:
            engine.dispose()
    uow = svc.unit(Origin(actor="outbox-prune", ip="local"))
    try:
        uow.record(Event.OUTBOX_PRUNED, ok=True, resource="outbox", detail=f"deleted={deleted} days={days}")
        uow.commit()
    except sa.exc.SQLAlchemyError as exc:
        raise click.ClickException(
            f"pruned {deleted} row(s) but could not audit it ({type(exc).__name__}) — "
            "check the database with `flask --app webapp health`"
        ) from None
    finally:
        uow.close()
    click.echo(f"pruned {deleted} sent row(s) older than {days} day(s)")
