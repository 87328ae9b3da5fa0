"""`flask --app webapp ...` admin commands. Every one is audited (actor `cli:<os user>`).

Exit 0 on success; exit 1 with a one-line reason on stderr otherwise (the CA tool relies on this).
Passwords are prompted for (hidden) or read from stdin with --password-stdin, never taken as
arguments: argv is visible to every local user.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import sqlalchemy as sa
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from webapp.admin import service
from webapp.audit import service as audit
from webapp.auth.certs import BadCertificate, CertInfo
from webapp.db import migrate
from webapp.db.engine import READ_ONLY
from webapp.db.tables import ROLES
from webapp.events import Event
from webapp.services import services
from webapp.unit import Origin

users_cli = AppGroup("users", help="Manage users.")
certs_cli = AppGroup("certs", help="Bind client certificates to users.")
audit_cli = AppGroup("audit", help="Check the audit trail.")
db_cli = AppGroup("db", help="Create or migrate the database.")


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@contextmanager
def _admin() -> Iterator[service.AdminContext]:
    """One audited unit of work; refusals keep their audit record and exit 1."""
    svc = services()
    try:
        actor = "cli:" + getpass.getuser()
    except (KeyError, OSError):
        actor = "cli:?"
    uow = svc.unit(Origin(actor=actor, ip="local"))
    ctx = service.AdminContext(
        uow=uow, hasher=svc.hasher, now=svc.clock.now(), min_score=current_app.config["PASSWORD_MIN_SCORE"]
    )
    try:
        yield ctx
        uow.commit()
    except service.AdminError as exc:
        try:
            uow.abandon()
        except sa.exc.SQLAlchemyError:
            _fail("the database refused the audit record; nothing was changed")
        _fail(str(exc))
    except sa.exc.SQLAlchemyError as exc:
        uow.rollback()
        _fail(f"database error ({type(exc).__name__}); nothing was changed")
    finally:
        uow.close()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        _fail("the two passwords differ")
    return first


_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin (one line)."
)


@users_cli.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True)
@_stdin_option
def users_add(username: str, role: str, password_stdin: bool) -> None:
    password = _read_password(password_stdin)
    with _admin() as ctx:
        service.add_user(ctx, username, role, password)
    click.echo(f"added {username} ({role})")


@users_cli.command("reset-password")
@click.argument("username")
@_stdin_option
def users_reset_password(username: str, password_stdin: bool) -> None:
    password = _read_password(password_stdin)
    with _admin() as ctx:
        service.reset_password(ctx, username, password)
    click.echo(f"password of {username} reset; their sessions were ended")


@users_cli.command("set-pin")
@click.argument("username")
@click.option("--pin-stdin", is_flag=True, help="Read the PIN from stdin (one line).")
def users_set_pin(username: str, pin_stdin: bool) -> None:
    """Set the second PIN (needed where STRONGROOM_LOGIN_ENTRY is keypad-pin)."""
    if pin_stdin:
        line = sys.stdin.readline()
        pin = line[:-1] if line.endswith("\n") else line
    else:
        pin = getpass.getpass("New PIN: ")
        if getpass.getpass("Repeat it: ") != pin:
            _fail("the two PINs differ")
    with _admin() as ctx:
        service.set_pin(ctx, username, pin)
    click.echo(f"PIN of {username} set; their sessions were ended")


def _simple(name: str, action: Callable[[service.AdminContext, str], Any], done: str) -> None:
    @users_cli.command(name)
    @click.argument("username")
    def command(username: str) -> None:
        with _admin() as ctx:
            action(ctx, username)
        click.echo(done.format(username=username))

    command.__doc__ = done.format(username="USERNAME")


_simple("disable", lambda c, u: service.set_active(c, u, active=False), "disabled {username}; sessions ended")
_simple("enable", lambda c, u: service.set_active(c, u, active=True), "enabled {username}")
_simple("unlock", service.unlock, "unlocked {username}")
_simple("kill-sessions", service.kill_sessions, "ended every session of {username}")


@users_cli.command("list")
def users_list() -> None:
    with _admin() as ctx:
        rows = service.list_users(ctx)
    for r in rows:
        state = "active" if r.active else "disabled"
        locked = f" locked-until={r.locked_until:%Y-%m-%dT%H:%M}Z" if r.locked_until else ""
        click.echo(f"{r.username}\t{r.role}\t{state}\tfailed={r.failed_logins}{locked}")


@certs_cli.command("bind")
@click.argument("username")
@click.argument("cert_pem_file", type=click.Path(dir_okay=False, path_type=Path))
def certs_bind(username: str, cert_pem_file: Path) -> None:
    try:
        cert = CertInfo.from_pem(cert_pem_file.read_bytes())
    except (OSError, BadCertificate) as exc:
        _fail(f"cannot read a PEM certificate from {cert_pem_file} ({type(exc).__name__})")
    with _admin() as ctx:
        service.bind_cert(ctx, username, cert)
    click.echo(f"bound {cert.fingerprint} (serial {cert.serial}) to {username}")


@certs_cli.command("unbind")
@click.argument("fingerprint")
@click.option("--reason", required=True, help="Why (recorded with the binding).")
def certs_unbind(fingerprint: str, reason: str) -> None:
    with _admin() as ctx:
        ended = service.unbind_cert(ctx, fingerprint, reason)
    click.echo(f"revoked binding; {ended} session(s) ended")


@certs_cli.command("list")
def certs_list() -> None:
    with _admin() as ctx:
        rows = service.list_certs(ctx)
    for r in rows:
        click.echo(
            f"{r.username}\t{r.status}\t{r.fingerprint}\tserial={r.serial}\tnot_after={r.not_after:%Y-%m-%d}\t{r.subject}"
        )


@audit_cli.command("verify")
@click.option("--expect-head", help="SEQ:HASH of a record seen in the remote (syslog) copy.")
def audit_verify(expect_head: str | None) -> None:
    anchor = None
    if expect_head:
        seq, _, digest = expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            _fail("--expect-head must be SEQ:HASH")
        anchor = (int(seq), digest.lower())
    svc = services()
    with svc.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        result = audit.verify(conn, expect_head=anchor)
    # Problems first: recording the verification can itself fail on a tampered chain (a forged row
    # beyond the head collides with the next sequence number), and must not hide what was found.
    for problem in result.problems[:50]:
        click.echo(problem, err=True)
    with _admin() as ctx:
        event = Event.AUDIT_VERIFIED if result.ok else Event.AUDIT_VERIFY_FAILED
        ctx.uow.record(event, ok=result.ok, resource="audit_log", detail=f"checked={result.checked}")
    if not result.ok:
        _fail(f"audit chain broken ({len(result.problems)} problem(s))")
    click.echo(f"audit chain intact: {result.checked} records, head {result.head_seq}:{result.head_hash}")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Create the schema or migrate it to the newest revision (run as the DB owner, not the app user)."""
    migrate.upgrade(services().engine)
    click.echo("database is at the newest revision")


@click.command("health")
@with_appcontext
def health() -> None:
    """Exit 0 when requests can work: an audit append that rolls back, keyd answering, unsealed."""
    from webapp.health import problems

    found = problems(services())
    for problem in found[:-1]:
        click.echo(f"error: {problem}", err=True)
    if found:
        _fail(found[-1])
    click.echo("ok")


def register(app: Flask) -> None:
    for group in (users_cli, certs_cli, audit_cli, db_cli):
        app.cli.add_command(group)
    app.cli.add_command(health)
