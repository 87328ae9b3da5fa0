"""`python -m ops.remote_copy [--config FILE] fetch`: bring the log host's copy of this server's
forwarded log here, for the `remote` check (ops/checks/remote.py) to compare with the local one.

Run by strongroom-remote-copy.timer (ops/deploy/). Transport: SFTP (paramiko, through the backups'
`backup.remote.connect`: the same pinned-host-key policy, key-file-only authentication and timeouts)
to a dedicated account on the log host that can only read (`ForceCommand internal-sftp -R`, chrooted
to the log directory; docs/monitoring.md). The vault can read the log host's copy, never write it.

The fetch is bounded (the file's size is checked before and while reading) and atomic (a temp file in
the destination directory, fsync'd, then renamed): the check never compares with half a file. A
failed fetch leaves the previous copy, whose age the `remote` check alerts (`ops.remote_copy_stale`);
the copy's mtime is the time of the fetch.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
from pathlib import Path
from typing import Annotated, Any

import click
import paramiko
from pydantic import AfterValidator, Field, Strict

from backup.archive import BackupRefused
from backup.remote import Target, connect
from common import atomic
from common.settings import AbsolutePath, SettingsModel, SettingsRefused, read_toml, validate

DEFAULT_CONFIG = "/etc/strongroom/remote-copy.toml"
DEFAULT_DEST = Path("/var/lib/strongroom-watch/remote/forwarded.log")
MAX_BYTES = 256 * 1024 * 1024  # the remote check's own bound (ops/checks/remote.py MAX_BYTES)
_CHUNK = 256 * 1024
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*|[0-9A-Fa-f:.]{2,45})$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class RemoteCopyFailed(RuntimeError):
    """The settings are wrong or the copy could not be fetched; the previous copy is left as it was."""


def _remote_file(value: str) -> str:
    if not value.startswith("/") or "\x00" in value or ".." in value.split("/"):
        raise ValueError("must be an absolute path without '..'")
    if not value.rstrip("/") or value.endswith("/"):
        raise ValueError("must name a file")
    return value


class Settings(SettingsModel):
    """/etc/strongroom/remote-copy.toml: each setting with its type, default and limit."""

    host: Annotated[str, Field(max_length=253, pattern=_HOST.pattern)]
    user: Annotated[str, Field(pattern=_USER.pattern)]
    key_file: AbsolutePath
    known_hosts: AbsolutePath
    # As the log host's account sees it (inside its chroot).
    remote_path: Annotated[str, AfterValidator(_remote_file)]
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    dest: AbsolutePath = DEFAULT_DEST
    max_bytes: Annotated[int, Field(gt=0, le=MAX_BYTES)] = MAX_BYTES
    timeout: Annotated[float, Strict(False), Field(gt=0, le=600)] = 30.0


def parse(raw: dict[str, Any], *, source: str = "remote-copy settings") -> Settings:
    try:
        return validate(Settings, raw, source=source)
    except SettingsRefused as exc:
        raise RemoteCopyFailed(str(exc)) from None


def load(path: Path) -> Settings:
    try:
        return parse(read_toml(path), source=str(path))
    except SettingsRefused as exc:
        raise RemoteCopyFailed(str(exc)) from None


def _read_bounded(sftp: paramiko.SFTPClient, path: str, limit: int) -> bytes:
    attrs = sftp.stat(path)
    if attrs.st_mode is None or not stat.S_ISREG(attrs.st_mode):
        raise RemoteCopyFailed(f"{path} on the log host is not a regular file")
    if (attrs.st_size or 0) > limit:
        raise RemoteCopyFailed(f"{path} on the log host is over {limit} bytes")
    chunks, total = [], 0
    with sftp.open(path, "rb") as fh:
        fh.prefetch(attrs.st_size)
        while chunk := fh.read(_CHUNK):
            total += len(chunk)
            if total > limit:  # it grew while we read: the bound holds all the same
                raise RemoteCopyFailed(f"{path} on the log host is over {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _write_atomically(dest: Path, data: bytes) -> None:
    directory = dest.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        # Whoever can write here can swap the copy the alarm compares with.
        raise RemoteCopyFailed(f"{directory} must be a directory of ours that others cannot write")
    atomic.write_bytes(dest, data, mode=0o600)


def fetch(settings: Settings) -> int:
    """Fetch the log host's copy to `settings.dest`; returns its size. Raises RemoteCopyFailed."""
    target = Target(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        key_file=settings.key_file,
        known_hosts=settings.known_hosts,
        directory=posixpath.dirname(settings.remote_path),
    )
    try:
        with connect(target, timeout=settings.timeout) as sftp:
            data = _read_bounded(sftp, settings.remote_path, settings.max_bytes)
    except BackupRefused as exc:  # host key, key file, connection: backup.remote's reasons
        raise RemoteCopyFailed(str(exc)) from None
    except FileNotFoundError:
        raise RemoteCopyFailed(f"{settings.remote_path} does not exist on the log host") from None
    except PermissionError:
        raise RemoteCopyFailed(f"{settings.remote_path} on the log host is not readable") from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise RemoteCopyFailed(f"the fetch failed: {type(exc).__name__}") from None
    _write_atomically(settings.dest, data)
    return len(data)


@click.group()
@click.option("--config", default=DEFAULT_CONFIG, show_default=True, help="Settings file (TOML).")
@click.pass_context
def cli(ctx: click.Context, config: str) -> None:
    """The log host's copy of this server's forwarded log, for the watchdog's `remote` check."""
    ctx.obj = {"config": Path(config)}


@cli.command("fetch")
@click.pass_context
def fetch_cmd(ctx: click.Context) -> None:
    """Fetch the copy once (atomically; on failure the previous copy stays, and ages)."""
    try:
        size = fetch(load(ctx.obj["config"]))
    except RemoteCopyFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"fetched {size} bytes")


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        cli(prog_name="python -m ops.remote_copy")


if __name__ == "__main__":
    main()
