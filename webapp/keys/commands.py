"""`flask --app webapp keys versions|rewrap|retire`: the web app's half of a key rotation.

    python -m keyd rotate                          # keyd: a new key version, used for new writes at once
    flask --app webapp keys rewrap                 # every stored field re-encrypted under it (resumable)
    flask --app webapp keys versions               # proves nothing old is left
    flask --app webapp keys retire --min-version N # refused while any field still needs an older version

Every command leaves an audit record (actor `cli:<os user>`), refused or not. Exit 0 on success,
1 with a one-line reason on stderr otherwise.

The rewrap job UPDATEs encrypted columns, which the web app's own database user may not do (cards
are written once): in production point `STRONGROOM_KEYS_DATABASE_URL` at the maintenance user that
docs/key-rotation.md sets up. The audit records still go through the app's own connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import sqlalchemy as sa
from flask import current_app
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from keyd.client import KeydAdminClient, KeydClient
from keyd.errors import KeydError, Unavailable
from webapp.cli import Group, actor
from webapp.db.engine import READ_ONLY, make_engine
from webapp.events import Event
from webapp.keys import service
from webapp.services import services
from webapp.unit import Origin, UnitOfWork

keys_cli = Group("keys", help="Key rotation: counts per key version, rewrap, retire.")


@contextmanager
def _audited() -> Iterator[UnitOfWork]:
    svc = services()
    uow: UnitOfWork = svc.unit(Origin(actor=actor(), ip="local"))
    try:
        yield uow
    finally:
        uow.close()


def _record(uow: UnitOfWork, event: Event, *, ok: bool, detail: str = "-") -> None:
    uow.record(event, ok=ok, resource="keys", detail=detail[:200])
    try:
        uow.commit()
    except sa.exc.SQLAlchemyError:
        raise click.ClickException(
            "the database refused the audit record — check the database with `flask --app webapp health`"
        ) from None


def _keyd_client() -> KeydClient:
    vault = services().vault
    if not isinstance(vault, KeydClient):
        raise Unavailable("the keyd client is not installed")
    return vault


def _maintenance_engine() -> sa.Engine:
    """The engine of STRONGROOM_KEYS_DATABASE_URL (one per command), else the app's own."""
    url = current_app.config.get("KEYS_DATABASE_URL")
    if not url:
        return services().engine
    ctx = click.get_current_context()
    made: sa.Engine | None = ctx.meta.get("strongroom_keys_engine")
    if made is None:
        made = make_engine(str(url))
        ctx.meta["strongroom_keys_engine"] = made
        ctx.call_on_close(made.dispose)  # the pooled connections go back when the command is done
    return made


@keys_cli.command("versions")
def versions() -> None:
    """Stored ciphertexts per table, field and key version, and keyd's current and minimum version."""
    with _audited() as uow:
        try:
            counts = _counts()
        except sa.exc.SQLAlchemyError as exc:
            _record(uow, Event.VERSIONS_LISTED, ok=False, detail=f"db:{type(exc).__name__}")
            raise click.ClickException(
                f"database error ({type(exc).__name__}) — check the database with `flask --app webapp health`"
            ) from None
        try:
            status = _keyd_client().status()
            keyd_line = (
                f"keyd: current version {status.key_version}, "
                f"minimum decrypt version {status.min_decrypt_version}"
            )
        except KeydError as exc:
            keyd_line = f"keyd: {exc.reason or exc.code.value} (versions in keyd unknown)"
        _record(uow, Event.VERSIONS_LISTED, ok=True)
    click.echo(keyd_line)
    click.echo("table\tfield\tversion\tcount")
    for c in counts:
        click.echo(
            f"{c.table}\t{c.field}\t{'not-a-ciphertext' if c.version is None else c.version}\t{c.count}"
        )
    for v, n in sorted(service.totals(counts).items(), key=lambda kv: kv[0] or 0):
        click.echo(f"total\t*\t{'not-a-ciphertext' if v is None else v}\t{n}")


@keys_cli.command("rewrap")
@click.option(
    "--batch-size",
    type=click.IntRange(1, service.MAX_BATCH),
    default=500,
    show_default=True,
    help="Fields per keyd call; four calls' worth of rows are committed per transaction.",
)
@click.option("--restart", is_flag=True, help="Forget a saved checkpoint and start from the first row.")
def rewrap(batch_size: int, restart: bool) -> None:
    """Re-encrypt every stored field under keyd's newest key version (resumes after a crash)."""
    svc = services()
    engine = _maintenance_engine()
    with _audited() as uow:
        try:
            keyd = _keyd_client()
            target = keyd.status().key_version
            if target is None:
                raise Unavailable("keyd reports no key version")
        except KeydError as exc:
            _record(uow, Event.REWRAP_FAILED, ok=False, detail=exc.reason or exc.code.value)
            raise click.ClickException(
                f"keyd: {exc.reason or exc.code.value} — check keyd with `python -m keyd status`"
            ) from None
        err = Console(stderr=True)
        with Progress(
            TextColumn(f"rewrap to v{target}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        ) as bar:
            task = bar.add_task("rewrap", total=None)
            job = service.Rewrapper(
                engine,
                keyd=keyd,
                actor=actor()[:64].replace(":", "."),
                now=svc.clock.now,
                batch_size=batch_size,
                progress=lambda n: bar.advance(task, n),
            )
            if restart:
                job.forget_checkpoint()
            bar.update(task, total=_total(engine))
            try:
                report = job.run(target)
            except KeydError as exc:
                _record(uow, Event.REWRAP_FAILED, ok=False, detail=f"keyd:{exc.reason or exc.code.value}")
                raise click.ClickException(
                    f"keyd: {exc.reason or exc.code.value}; the checkpoint is kept — run rewrap again"
                ) from None
            except sa.exc.SQLAlchemyError as exc:
                _record(uow, Event.REWRAP_FAILED, ok=False, detail=f"db:{type(exc).__name__}")
                raise click.ClickException(
                    f"database error ({type(exc).__name__}); the checkpoint is kept — run rewrap again"
                ) from None
        detail = (
            f"target=v{target} rewrapped={report.rewrapped} current={report.already_current} "
            f"concurrent={report.changed_concurrently} failed={len(report.failures)}"
        )
        _record(uow, Event.REWRAPPED if report.ok else Event.REWRAP_FAILED, ok=report.ok, detail=detail)
    for table in report.restarted:
        click.echo(f"restarted {table} from the first row: its checkpoint was for another key version")
    for table, last in report.resumed.items():
        click.echo(f"resumed {table} after {'the end' if last == 'done' else last or 'the start'}")
    click.echo(detail.replace(" ", "\n"))
    for f in report.failures[:50]:
        click.echo(f"failed\t{f.table}\t{f.row_id}\t{f.field}\t{f.reason}", err=True)
    if not report.ok:
        raise click.ClickException(
            f"{len(report.failures)} field(s) could not be rewrapped (listed above); nothing else was lost"
            "; they keep their old version — run rewrap again"
        )


def _counts() -> list[service.VersionCount]:
    # The maintenance identity reads every encrypted table (the app's own user may not read them all).
    with _maintenance_engine().connect().execution_options(**{READ_ONLY: True}) as conn:
        return service.count_versions(conn)


def _total(engine: sa.Engine) -> int:
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        return sum(c.count for c in service.count_versions(conn))


@keys_cli.command("retire")
@click.option("--min-version", type=int, required=True, help="The oldest key version keyd may still decrypt.")
def retire(min_version: int) -> None:
    """Make keyd refuse versions below N; refused while any stored field still uses one."""
    with _audited() as uow:
        try:
            engine = _maintenance_engine()
            with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
                service.check_retire(conn, min_version)
        except service.KeysRefused as exc:
            _record(uow, Event.RETIRE_REFUSED, ok=False, detail=str(exc))
            raise click.ClickException(str(exc)) from None
        except sa.exc.SQLAlchemyError as exc:
            # Fail closed: fields that cannot be counted may be fields under the old version.
            _record(uow, Event.RETIRE_REFUSED, ok=False, detail=f"db:{type(exc).__name__}")
            raise click.ClickException(
                f"cannot count the stored fields (database error {type(exc).__name__}); nothing retired — "
                "check the database with `flask --app webapp health`"
            ) from None
        try:
            with KeydAdminClient(current_app.config["KEYD_SOCKET"], timeout=10.0) as admin:
                status = admin.retire(min_version, actor=actor()[:64].replace(":", "."))
        except KeydError as exc:
            _record(uow, Event.RETIRE_REFUSED, ok=False, detail=f"keyd:{exc.reason or exc.code.value}")
            raise click.ClickException(f"keyd refused: {exc.reason or exc.code.value}") from None
        _record(uow, Event.RETIRED, ok=True, detail=f"min_version={status.min_decrypt_version}")
    click.echo(f"keyd now refuses versions below {status.min_decrypt_version}")
