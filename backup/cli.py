"""`python -m backup ...`: take, check, ship, prune and restore Strongroom backups (docs/backup.md).

\b
    python -m backup keygen offline --out DIR     # on the OFFLINE machine: age identity + recipient
    python -m backup keygen signing --out DIR     # on the server: Ed25519 signing key + public half
    python -m backup create ...                   # snapshot -> encrypted, signed strongroom-*.sbk
    python -m backup verify FILE ...              # signature (and with --identity: every checksum)
    python -m backup send FILE ...                # SFTP, pinned host key, resumable, read back
    python -m backup prune ...                    # retention on the remote (and local) copies
    python -m backup fetch NAME ...               # the remote copy back (restore drill)
    python -m backup restore FILE ...             # into an EMPTY database + a new keyd state dir
    python -m backup check ...                    # every stored field opens through keyd

Exit 0 on success; 1 with a one-line reason on stderr otherwise. create, verify and send raise an
alert in the web app's outbox when they fail (give --alert-database-url, or it defaults to
--database-url where the command has one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from backup import archive, remote, snapshot
from backup.archive import BackupRefused

ERR = Console(stderr=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _engine(url: str) -> sa.Engine:
    from webapp.db.engine import make_engine

    try:
        return make_engine(url)
    except (ValueError, sa.exc.ArgumentError) as exc:
        raise click.ClickException(f"bad database URL: {exc}") from None


def _alert(url: str | None, event: str, step: str, reason: str) -> None:
    if not url:
        click.echo("warning: no --alert-database-url: this failure raised no alert", err=True)
        return
    from backup.alerts import raise_alert
    from webapp.events import Event

    try:
        engine = _engine(url)
        raise_alert(engine, Event(event), step=step, reason=reason, now=_now())
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        click.echo(f"warning: the alert could not be written either ({type(exc).__name__})", err=True)


def _audit_success(url: str | None, event: str, detail: str) -> None:
    if not url:
        return
    from backup.alerts import record_success
    from webapp.events import Event

    try:
        engine = _engine(url)
        record_success(engine, Event(event), detail=detail, now=_now())
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        raise click.ClickException(
            f"the backup worked but its audit record could not be written ({type(exc).__name__})"
        ) from None


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if isinstance(exc, BackupRefused) else type(exc).__name__


def _private_write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@click.group(help=__doc__)
def main() -> None:
    pass


# --- keys ---------------------------------------------------------------------------------------


@main.group()
def keygen() -> None:
    """Make the backup key pairs (once)."""


@keygen.command("offline")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def keygen_offline(out: Path) -> None:
    """The age identity (secret: stays OFFLINE) and its recipient (public: goes to the server)."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    identity, recipient = archive.new_identity()
    try:
        _private_write(
            out / "backup-identity.txt",
            f"# Strongroom backup identity: OFFLINE ONLY\n{identity}\n".encode(),
            0o600,
        )
        _private_write(out / "backup-recipient.txt", f"{recipient}\n".encode(), 0o644)
    except FileExistsError as exc:
        raise click.ClickException(f"{exc.filename} exists: refusing to replace a backup key") from None
    click.echo(f"recipient (copy to the server): {recipient}")
    click.echo(f"identity written to {out / 'backup-identity.txt'}: keep it offline, in two places")


@keygen.command("signing")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def keygen_signing(out: Path) -> None:
    """The server's Ed25519 signing key (stays on the server) and its public half (for restores)."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    private, public = archive.new_signing_key()
    try:
        _private_write(out / "backup-signing.key", private, 0o600)
        _private_write(out / "backup-signing.pub", public, 0o644)
    except FileExistsError as exc:
        raise click.ClickException(f"{exc.filename} exists: refusing to replace a backup key") from None
    click.echo(
        f"signing key written to {out / 'backup-signing.key'}; "
        "keep backup-signing.pub with the offline identity"
    )


# --- create / verify ----------------------------------------------------------------------------

_db = click.option(
    "--database-url", envvar="STRONGROOM_BACKUP_DATABASE_URL", required=True, help="SQLAlchemy URL."
)
_alert_db = click.option(
    "--alert-database-url",
    envvar="STRONGROOM_BACKUP_ALERT_DATABASE_URL",
    default=None,
    help="Where failures are alerted (the web app's database); default: --database-url.",
)
_pub = click.option(
    "--signing-pub",
    envvar="STRONGROOM_BACKUP_SIGNING_PUB",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The server's signing public key (PEM).",
)


def _progress(*columns: Any) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), *columns, console=ERR)


@main.command()
@_db
@_alert_db
@click.option("--keyd-state-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None)
@click.option(
    "--recipient", envvar="STRONGROOM_BACKUP_RECIPIENT", required=True, help="age1... or a file with it."
)
@click.option(
    "--signing-key",
    envvar="STRONGROOM_BACKUP_SIGNING_KEY",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
)
@click.option("--out-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True)
def create(
    database_url: str,
    alert_database_url: str | None,
    keyd_state_dir: Path | None,
    recipient: str,
    signing_key: Path,
    out_dir: Path,
) -> None:
    """Snapshot the database and keyd's state into an encrypted, signed backup file."""
    from webapp.records.tables import ENCRYPTED_COLUMNS

    now = _now()
    try:
        to = archive.load_recipient(recipient)
        signer = archive.load_signing_key(signing_key)
        engine = _engine(database_url)
        encrypted = {t.name: {f: c.name for f, c in cols.items()} for t, cols in ENCRYPTED_COLUMNS.items()}
        with _progress(MofNCompleteColumn()) as bar:
            task = bar.add_task("tables", total=None)
            snap = snapshot.create_snapshot(
                engine,
                keyd_state_dir=keyd_state_dir,
                encrypted=encrypted,
                now=now,
                progress=lambda t, n: bar.update(task, advance=1, description=f"{t} ({n} rows)"),
            )
        engine.dispose()
        out = out_dir / remote.backup_name(now)
        archive.seal(snap.archive, recipient=to, signing_key=signer, out=out)
    except (BackupRefused, sa.exc.SQLAlchemyError, OSError) as exc:
        _alert(alert_database_url or database_url, "backup.failed", "create", _reason(exc))
        raise click.ClickException(f"backup not created: {_reason(exc)}") from None
    m = snap.manifest
    _audit_success(alert_database_url or database_url, "backup.created", f"{out.name} sha256={_sha256(out)}")
    click.echo(str(out))
    click.echo(
        f"tables={len(m['tables'])} rows={sum(t['rows'] for t in m['tables'].values())} "
        f"key_versions={m['key_versions']}"
    )


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_pub
@click.option(
    "--identity",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The offline age identity: also decrypt and check every checksum of the manifest.",
)
@_alert_db
def verify(file: Path, signing_pub: Path, identity: Path | None, alert_database_url: str | None) -> None:
    """Check a backup's signature (anywhere), and with --identity its content (offline)."""
    try:
        key = archive.load_verify_key(signing_pub)
        if identity is None:
            with file.open("rb") as f:
                archive.check_signature(f, os.fstat(f.fileno()).st_size, key)
            click.echo(f"{file.name}: signature OK (content not checked: no --identity)")
            return
        opened = snapshot.read_snapshot(
            archive.open_sealed(file, verify_key=key, identity=archive.load_identity(identity))
        )
    except BackupRefused as exc:
        _alert(alert_database_url, "backup.verify_failed", "verify", str(exc))
        raise click.ClickException(f"{file.name}: REFUSED: {exc}") from None
    _print_manifest(file.name, opened.manifest)


def _print_manifest(name: str, m: dict[str, Any]) -> None:
    click.echo(f"{name}: signature, decryption and every checksum OK")
    click.echo(f"created {m['created_at']} from {m['database']}, schema {','.join(m['schema'])}")
    for t, info in sorted(m["tables"].items()):
        click.echo(f"  {t}\t{info['rows']} rows")
    click.echo(f"ciphertexts per key version: {m['key_versions']}")
    if m["keyd"].get("files"):
        k = m["keyd"]
        click.echo(
            f"keyd state: {', '.join(sorted(k['files']))} "
            f"(current v{k['current_version']}, min v{k['min_decrypt_version']})"
        )


# --- remote -------------------------------------------------------------------------------------


def _remote_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--host", envvar="STRONGROOM_BACKUP_HOST", required=True),
        click.option(
            "--port",
            envvar="STRONGROOM_BACKUP_PORT",
            type=click.IntRange(1, 65535),
            default=22,
            show_default=True,
        ),
        click.option("--user", envvar="STRONGROOM_BACKUP_USER", required=True),
        click.option(
            "--ssh-key",
            envvar="STRONGROOM_BACKUP_SSH_KEY",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            required=True,
        ),
        click.option(
            "--known-hosts",
            envvar="STRONGROOM_BACKUP_KNOWN_HOSTS",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            required=True,
            help="The pinned host key of the backup server (known_hosts format).",
        ),
        click.option("--remote-dir", envvar="STRONGROOM_BACKUP_REMOTE_DIR", required=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _target(
    host: str, port: int, user: str, ssh_key: Path, known_hosts: Path, remote_dir: str
) -> remote.Target:
    if not remote_dir.startswith("/"):
        raise click.ClickException("--remote-dir must be an absolute path")
    return remote.Target(host, port, user, ssh_key, known_hosts, remote_dir)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_remote_options
@_alert_db
def send(file: Path, alert_database_url: str | None, **kw: Any) -> None:
    """Upload a backup (resuming an interrupted upload), read it back, then publish it under its name."""
    target = _target(**kw)
    try:
        with _progress(DownloadColumn(), TransferSpeedColumn()) as bar:
            task = bar.add_task(file.name, total=file.stat().st_size)
            sent = remote.send(file, target, progress=lambda n: bar.advance(task, n))
    except (BackupRefused, OSError) as exc:
        _alert(alert_database_url, "backup.failed", "send", _reason(exc))
        raise click.ClickException(f"not sent: {_reason(exc)}") from None
    _audit_success(alert_database_url, "backup.sent", f"{file.name} sha256={sent.sha256}")
    if sent.sent == 0:
        click.echo(f"{sent.remote_path} is already there with the same SHA-256; nothing sent")
        return
    resumed = f", resumed at byte {sent.resumed_at}" if sent.resumed_at else ""
    click.echo(f"sent {sent.remote_path} ({sent.sent} bytes{resumed}); remote sha256 {sent.sha256} matches")


@main.command()
@click.argument("name")
@_remote_options
@click.option("--dest", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True)
def fetch(name: str, dest: Path, **kw: Any) -> None:
    """Download a backup from the remote (for a restore or a restore drill)."""
    try:
        out = remote.fetch(name, _target(**kw), dest)
    except (BackupRefused, OSError) as exc:
        raise click.ClickException(f"not fetched: {_reason(exc)}") from None
    click.echo(str(out))


@main.command()
@_remote_options
@click.option("--keep-last", type=click.IntRange(min=1), default=14, show_default=True)
@click.option("--keep-days", type=click.IntRange(min=0), default=35, show_default=True)
@click.option("--local-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None)
def prune(keep_last: int, keep_days: int, local_dir: Path | None, **kw: Any) -> None:
    """Delete backups that are neither among the newest N nor younger than D days (remote, and local)."""
    now = _now()
    try:
        gone = remote.prune(_target(**kw), keep_last=keep_last, keep_days=keep_days, now=now)
        if local_dir is not None:
            gone += [
                f"local:{n}"
                for n in remote.local_prune(local_dir, keep_last=keep_last, keep_days=keep_days, now=now)
            ]
    except (BackupRefused, OSError) as exc:
        raise click.ClickException(f"prune failed: {_reason(exc)}") from None
    for n in gone:
        click.echo(f"pruned {n}")
    click.echo(f"{len(gone)} pruned")


# --- restore ------------------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_pub
@click.option("--identity", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True)
@click.option("--database-url", required=True, help="An EMPTY database, as its owner.")
@click.option(
    "--keyd-state-dir", type=click.Path(path_type=Path), default=None, help="A new, empty directory."
)
@click.option(
    "--keyd-socket",
    type=click.Path(path_type=Path),
    default=None,
    help="A keyd already unsealed on this backup's state: check every field right after the restore.",
)
def restore(
    file: Path,
    signing_pub: Path,
    identity: Path,
    database_url: str,
    keyd_state_dir: Path | None,
    keyd_socket: Path | None,
) -> None:
    """Restore a verified backup into an empty database (and keyd's state into a new directory)."""
    from alembic.script import ScriptDirectory

    from webapp.db import migrate

    try:
        plain = archive.open_sealed(
            file, verify_key=archive.load_verify_key(signing_pub), identity=archive.load_identity(identity)
        )
        opened = snapshot.read_snapshot(plain)
        heads = list(ScriptDirectory.from_config(migrate.alembic_config()).get_heads())
        if keyd_state_dir is not None and keyd_state_dir.exists() and any(keyd_state_dir.iterdir()):
            raise BackupRefused(
                f"{keyd_state_dir} is not empty: keyd state is restored only into a new directory"
            )
        engine = _engine(database_url)
        with _progress(MofNCompleteColumn()) as bar:
            task = bar.add_task("restore", total=len(opened.manifest["tables"]))
            counts = snapshot.restore_database(
                engine,
                opened,
                migrate=migrate.upgrade,
                heads=heads,
                progress=lambda t, n: bar.update(task, advance=1, description=f"{t} ({n} rows)"),
            )
        engine.dispose()
        written = snapshot.restore_keyd_state(opened, keyd_state_dir) if keyd_state_dir is not None else []
    except (BackupRefused, sa.exc.SQLAlchemyError, OSError) as exc:
        raise click.ClickException(f"restore refused: {_reason(exc)}") from None
    # The restored chain goes on from the backup's head: its next record says where it came from, so
    # the restored database itself shows when, and from which file, it was brought back.
    _audit_success(database_url, "backup.restored", f"{file.name} sha256={_sha256(file)}")
    click.echo(f"restored {sum(counts.values())} rows in {len(counts)} tables from {file.name}")
    if written:
        click.echo(f"keyd state restored to {keyd_state_dir}: {', '.join(written)}")
    click.echo(f"ciphertexts per key version in the backup: {opened.manifest['key_versions']}")
    if keyd_socket is not None:
        _check(database_url, keyd_socket)
    else:
        click.echo("next: start keyd on the restored state, unseal it, then `python -m backup check`")


@main.command()
@click.option("--database-url", required=True)
@click.option("--keyd-socket", type=click.Path(path_type=Path), required=True)
def check(database_url: str, keyd_socket: Path) -> None:
    """Every encrypted field of the database must open through keyd (rewrap: no plaintext leaves keyd)."""
    _check(database_url, keyd_socket)


def _check(database_url: str, keyd_socket: Path) -> None:
    from backup.check import check_decryptable
    from keyd.client import KeydClient
    from keyd.errors import KeydError

    engine = _engine(database_url)
    try:
        with KeydClient(keyd_socket, timeout=30.0) as keyd, _progress(MofNCompleteColumn()) as bar:
            task = bar.add_task("fields", total=None)
            report = check_decryptable(engine, keyd, progress=lambda n: bar.advance(task, n))
    except KeydError as exc:
        raise click.ClickException(f"keyd: {exc.reason or exc.code.value}") from None
    except sa.exc.SQLAlchemyError as exc:
        raise click.ClickException(f"database error ({type(exc).__name__})") from None
    finally:
        engine.dispose()
    click.echo(
        f"records={report.records} fields={report.fields} decryptable={report.decryptable} "
        f"failed={len(report.failures)}"
    )
    for t, rid, f, why in report.failures[:50]:
        click.echo(f"failed\t{t}\t{rid}\t{f}\t{why}", err=True)
    if not report.ok:
        raise click.ClickException(
            f"{report.fields - report.decryptable} of {report.fields} fields do not decrypt"
        )
    click.echo("100% of encrypted fields decrypt through keyd")
