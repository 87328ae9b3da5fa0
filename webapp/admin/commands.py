"""`flask --app webapp users|certs|audit|db|health`: the admin commands. Every one is audited
(actor `cli:<os user>`).

Exit 0 on success; exit 1 with one line `Error: <reason>` on stderr otherwise (the CA tool relies on
this). A database error says that nothing was changed, and what to do next: after a transaction
MariaDB rolled back whole by itself (1213, 1047: webapp/retry.py), run the command again; after any
other, check the database with `health`.
Passwords are prompted for (hidden) or read from stdin with --password-stdin, never taken as
arguments: argv is visible to every local user.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import with_appcontext

from webapp import health_agent
from webapp.admin import service
from webapp.audit import service as audit
from webapp.auth.certs import BadCertificate, CertInfo
from webapp.cli import Command, Group, UsageFailure, actor
from webapp.db import migrate
from webapp.db.engine import READ_ONLY
from webapp.db.tables import PERSON_ROLES, SERVICE_ROLES
from webapp.events import Event
from webapp.health import problems
from webapp.retry import RETRYABLE, retryable_code
from webapp.services import services
from webapp.unit import Origin

users_cli = Group("users", help="Add users, reset their passwords and PINs, disable, unlock, list them.")
certs_cli = Group("certs", help="Bind client certificates to users, revoke bindings, list them.")
services_cli = Group(
    "services", help="Add service accounts (the CRM's, for the JSON API) and bind their certificates."
)
audit_cli = Group("audit", help="Check the audit trail.")
db_cli = Group("db", help="Create or migrate the database.")
DB_NEXT_STEP = (
    "check it with `flask --app webapp health`; a missing or old schema needs `flask --app webapp db upgrade`"
)


@contextmanager
def _admin() -> Iterator[service.AdminContext]:
    """One audited unit of work; refusals keep their audit record and exit 1."""
    svc = services()
    uow = svc.unit(Origin(actor=actor(), ip="local"))
    ctx = service.AdminContext(
        uow=uow, hasher=svc.hasher, now=svc.clock.now(), min_score=current_app.config["PASSWORD_MIN_SCORE"]
    )
    try:
        yield ctx
        uow.commit()
    except service.AdminError as exc:
        try:
            uow.abandon()
        except sa.exc.SQLAlchemyError as failed:
            raise _rolled_back(failed) or click.ClickException(
                "the database refused the audit record; nothing was changed — run `flask --app webapp health`"
            ) from None
        raise click.ClickException(str(exc)) from None
    except sa.exc.SQLAlchemyError as exc:
        uow.rollback()
        raise _rolled_back(exc) or click.ClickException(
            f"database error ({type(exc).__name__}); nothing was changed — {DB_NEXT_STEP}"
        ) from None
    finally:
        uow.close()


def _rolled_back(exc: BaseException) -> click.ClickException | None:
    """The one line for an error after which MariaDB rolled the whole transaction back itself (a
    deadlock or a Galera certification conflict, a Galera node not ready: webapp/retry.py): nothing
    was committed, so running the command again is safe, and is what helps (the web app re-runs its
    requests on these; a command is a person's to run again). Checking the database's health would
    send them looking for a fault that is already gone. None for every other error."""
    code = retryable_code(exc)
    if code is None:
        return None
    return click.ClickException(
        f"the database rolled the change back (MariaDB error {code}: {RETRYABLE[code]}); "
        "nothing was changed — run the command again"
    )


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise click.ClickException("the two passwords differ; nothing was changed — run the command again")
    return first


_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin (one line)."
)


@users_cli.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(PERSON_ROLES), required=True, help="What the user may do.")
@_stdin_option
def users_add(username: str, role: str, password_stdin: bool) -> None:
    """Add a user with a ROLE and a password (prompted for twice, hidden)."""
    password = _read_password(password_stdin)
    with _admin() as ctx:
        service.add_user(ctx, username, role, password)
    click.echo(f"added {username} ({role})")


@users_cli.command("reset-password")
@click.argument("username")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="For scripts only: read the new password from stdin (one line) and store it as a normal "
    "password, not a one-time one. Without it a one-time password is generated and printed.",
)
def users_reset_password(username: str, password_stdin: bool) -> None:
    """Give a user a generated one-time password (printed once: hand it over in person), clear a
    lockout and end their sessions; the next login must choose a new password."""
    password = _read_password(True) if password_stdin else None
    with _admin() as ctx:
        one_time = service.reset_password(ctx, username, password)
    click.echo(f"password of {username} reset; their sessions were ended")
    if one_time is not None:
        # stdout only, once: never logged or audited. The login spends it and forces a new password.
        click.echo(f"one-time password (works for one login, which must choose a new one): {one_time}")


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
            raise click.ClickException("the two PINs differ; nothing was changed — run the command again")
    with _admin() as ctx:
        service.set_pin(ctx, username, pin)
    click.echo(f"PIN of {username} set; their sessions were ended")


def _simple(name: str, action: Callable[[service.AdminContext, str], Any], what: str, done: str) -> None:
    @users_cli.command(name, help=what)
    @click.argument("username")
    def command(username: str) -> None:
        with _admin() as ctx:
            action(ctx, username)
        click.echo(done.format(username=username))


_simple(
    "disable",
    lambda c, u: service.set_active(c, u, active=False),
    "Disable a user: they cannot log in, and their sessions end.",
    "disabled {username}; sessions ended",
)
_simple(
    "enable",
    lambda c, u: service.set_active(c, u, active=True),
    "Enable a disabled user again.",
    "enabled {username}",
)
_simple(
    "unlock",
    service.unlock,
    "Lift a lockout after too many failed logins, before it ends by itself.",
    "unlocked {username}",
)
_simple(
    "kill-sessions",
    service.kill_sessions,
    "End every session of a user (they must log in again).",
    "ended every session of {username}",
)


@users_cli.command("list")
def users_list() -> None:
    """List users: name, role, active or disabled, failed logins, lock."""
    with _admin() as ctx:
        rows = service.list_users(ctx)
    for r in rows:
        state = "active" if r.active else "disabled"
        locked = f" locked-until={r.locked_until:%Y-%m-%dT%H:%M}Z" if r.locked_until else ""
        click.echo(f"{r.username}\t{r.role}\t{state}\tfailed={r.failed_logins}{locked}")


@services_cli.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(SERVICE_ROLES), default=SERVICE_ROLES[0], show_default=True)
@click.option(
    "--cert",
    "cert_pem_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The service certificate `python -m ca service NAME` issued, bound at once.",
)
def services_add(name: str, role: str, cert_pem_file: Path | None) -> None:
    """Add a service account NAME: no password (it never logs in); its service certificate is its
    only credential, on /api/v1 alone (docs/crm-api.md). Disable it with `users disable NAME`."""
    cert = _read_cert(cert_pem_file) if cert_pem_file is not None else None
    with _admin() as ctx:
        service.add_service(ctx, name, role)
        if cert is not None:
            service.bind_cert(ctx, name, cert)
    click.echo(f"added service account {name} ({role})")
    if cert is not None:
        click.echo(f"bound {cert.fingerprint} (serial {cert.serial}) to {name}")


def _read_cert(cert_pem_file: Path) -> CertInfo:
    try:
        return CertInfo.from_pem(cert_pem_file.read_bytes())
    except (OSError, BadCertificate) as exc:
        raise click.ClickException(
            f"cannot read a PEM certificate from {cert_pem_file} ({type(exc).__name__}) — "
            "give the certificate file the CA issued"
        ) from None


@certs_cli.command("bind")
@click.argument("username")
@click.argument("cert_pem_file", type=click.Path(dir_okay=False, path_type=Path))
def certs_bind(username: str, cert_pem_file: Path) -> None:
    """Bind the client certificate in CERT_PEM_FILE to a user (the CA tool runs this when it issues)."""
    try:
        cert = CertInfo.from_pem(cert_pem_file.read_bytes())
    except (OSError, BadCertificate) as exc:
        raise click.ClickException(
            f"cannot read a PEM certificate from {cert_pem_file} ({type(exc).__name__}) — "
            "give the certificate file the CA issued"
        ) from None
    with _admin() as ctx:
        service.bind_cert(ctx, username, cert)
    click.echo(f"bound {cert.fingerprint} (serial {cert.serial}) to {username}")


@certs_cli.command("unbind")
@click.argument("fingerprint")
@click.option("--reason", required=True, help="Why (recorded with the binding).")
def certs_unbind(fingerprint: str, reason: str) -> None:
    """Revoke the binding of the certificate with this SHA-256 FINGERPRINT and end its sessions."""
    with _admin() as ctx:
        ended = service.unbind_cert(ctx, fingerprint, reason)
    click.echo(f"revoked binding; {ended} session(s) ended")


@certs_cli.command("list")
def certs_list() -> None:
    """List certificate bindings: user, status, fingerprint, serial, expiry, subject."""
    with _admin() as ctx:
        rows = service.list_certs(ctx)
    for r in rows:
        click.echo(
            f"{r.username}\t{r.status}\t{r.fingerprint}\tserial={r.serial}\tnot_after={r.not_after:%Y-%m-%d}\t{r.subject}"
        )


@audit_cli.command("verify")
@click.option("--expect-head", help="SEQ:HASH of a record seen in the remote (syslog) copy.")
def audit_verify(expect_head: str | None) -> None:
    """Check the audit log's hash chain from its first record to its head (exit 1 if broken)."""
    anchor = None
    if expect_head:
        seq, _, digest = expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise click.ClickException(
                "--expect-head must be SEQ:HASH — copy it from the newest record of the remote syslog copy"
            )
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
        raise click.ClickException(
            f"audit chain broken ({len(result.problems)} problem(s), listed above) — "
            "see 'The audit log' in docs/admin-guide.md"
        )
    click.echo(f"audit chain intact: {result.checked} records, head {result.head_seq}:{result.head_hash}")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Create the schema or migrate it to the newest revision (run as the DB owner, not the app user)."""
    migrate.upgrade(services().engine)
    click.echo("database is at the newest revision")


def _agent_option(ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is not None:
        return health_agent.parse_listen(value)
    # click processes the options given on the command line before those left out, so a
    # --database-grace that was given is already in ctx.params here.
    if ctx.params.get("database_grace") is not None:
        raise UsageFailure("--database-grace only applies with --agent ADDR:PORT")
    return None


@click.command("health", cls=Command)
@click.option(
    "--agent",
    "agent",
    metavar="ADDR:PORT",
    callback=_agent_option,
    help="Keep running as the balancer's agent-check on ADDR:PORT (docs/runbook.md), until SIGTERM.",
)
@click.option(
    "--database-grace",
    "database_grace",
    metavar="SECONDS",
    callback=lambda _ctx, _param, value: None if value is None else health_agent.parse_grace(value),
    help=(
        f"With --agent: tell the balancer of a database problem (every node's at once) only once it has"
        f" lasted SECONDS (default {health_agent.DATABASE_GRACE:g}, 0 = at once, at most"
        f" {health_agent.MAX_DATABASE_GRACE:g}); sealed or unreachable keyd is told at once."
    ),
)
@with_appcontext
def health(agent: tuple[str, int] | None, database_grace: float | None) -> None:
    """Check that requests can work: exit 0 only when an audit append (rolled back) works and keyd
    answers, unsealed. With --agent, answer HAProxy's agent-check with that verdict instead."""
    if agent is not None:
        grace = health_agent.DATABASE_GRACE if database_grace is None else database_grace
        health_agent.run(services(), *agent, database_grace=grace)
        return
    found = problems(services())
    for problem in found[:-1]:
        click.echo(f"Error: {problem}", err=True)
    if found:
        raise click.ClickException(found[-1])
    click.echo("ok")
