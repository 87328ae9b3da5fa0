"""The off-site copy: SFTP (paramiko) with the server's host key pinned, resumable uploads, a read-back
check, and retention pruning.

Host key: only the keys in the operator's known_hosts file are accepted (RejectPolicy); an unknown
host and a changed key are both refused before authentication, so nothing is sent to an impostor.
Agent and ~/.ssh keys are never tried: only the key file given.

Upload: into `<name>.partial`, appending from the size already there after an interruption; then the
remote copy is read back and its SHA-256 compared with the local file's (a partial written by
someone else, or damaged, fails here and the upload starts again from zero once); only then is it
renamed to `<name>`. A reader never sees half a backup under the final name.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paramiko

from backup.archive import BackupRefused, check_not_writable_by_others

NAME = re.compile(r"^strongroom-(\d{8}T\d{6}Z)\.sbk$")
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    key_file: Path  # the client's private key (e.g. ed25519)
    known_hosts: Path  # the pinned host key(s)
    directory: str  # absolute remote directory


class RemoteRefused(BackupRefused):
    """The remote side could not be trusted or reached; nothing was (or will be) left under the final name."""


@contextmanager
def connect(target: Target, *, timeout: float = 15.0) -> Iterator[paramiko.SFTPClient]:
    check_not_writable_by_others(target.known_hosts)
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(target.known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteRefused(f"cannot read the pinned host keys in {target.known_hosts}: {exc}") from None
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        if target.key_file.stat().st_mode & 0o077:
            raise RemoteRefused(f"{target.key_file} is readable by others: chmod 600 it")
        pkey = paramiko.PKey.from_path(str(target.key_file))
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteRefused(f"cannot load the SSH key {target.key_file}: {type(exc).__name__}") from None
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            pkey=pkey,
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException:
        client.close()
        raise RemoteRefused(
            f"the host key of {target.host}:{target.port} does not match the pinned key: "
            "refusing (possible impostor)"
        ) from None
    except paramiko.SSHException as exc:
        client.close()
        text = str(exc)
        if "not found in known_hosts" in text:
            raise RemoteRefused(
                f"{target.host}:{target.port} is not in {target.known_hosts}: refusing"
            ) from None
        raise RemoteRefused(f"SSH to {target.host}:{target.port} failed: {type(exc).__name__}") from None
    except OSError as exc:
        client.close()
        raise RemoteRefused(f"cannot reach {target.host}:{target.port}: {exc.strerror or exc}") from None
    try:
        sftp = client.open_sftp()
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(timeout)
        yield sftp
        sftp.close()
    except paramiko.SSHException as exc:
        raise RemoteRefused(
            f"the SSH session to {target.host}:{target.port} failed: {type(exc).__name__}"
        ) from None
    finally:
        client.close()


def _sha256_local(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sha256_remote(sftp: paramiko.SFTPClient, path: str) -> str:
    h = hashlib.sha256()
    with sftp.open(path, "rb") as f:
        f.prefetch()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _size(sftp: paramiko.SFTPClient, path: str) -> int | None:
    try:
        size = sftp.stat(path).st_size
        return None if size is None else int(size)
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Sent:
    remote_path: str
    resumed_at: int  # bytes that were already there from an interrupted upload
    sent: int
    sha256: str


def send(
    local: Path, target: Target, *, progress: Callable[[int], None] = lambda _n: None, timeout: float = 15.0
) -> Sent:
    if not NAME.match(local.name):
        raise BackupRefused(f"{local.name} is not a backup file name (strongroom-YYYYMMDDTHHMMSSZ.sbk)")
    size = local.stat().st_size
    digest = _sha256_local(local)
    final = posixpath.join(target.directory, local.name)
    partial = final + ".partial"
    with connect(target, timeout=timeout) as sftp:
        if _size(sftp, final) is not None:
            if _sha256_remote(sftp, final) == digest:
                return Sent(final, size, 0, digest)
            raise RemoteRefused(f"{final} exists remotely with other content: refusing to overwrite it")
        for attempt in (1, 2):
            have = _size(sftp, partial) or 0
            if have > size:
                sftp.remove(partial)
                have = 0
            sent = 0
            with local.open("rb") as src, sftp.open(partial, "ab" if have else "wb") as dst:
                dst.set_pipelined(True)
                src.seek(have)
                progress(have)
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    sent += len(chunk)
                    progress(len(chunk))
            if _size(sftp, partial) == size and _sha256_remote(sftp, partial) == digest:
                sftp.posix_rename(partial, final)
                return Sent(final, have, sent, digest)
            # A damaged or foreign partial: start once more from zero.
            sftp.remove(partial)
            if attempt == 2:
                break
        raise RemoteRefused(f"the remote copy of {local.name} does not match after upload")


def fetch(name: str, target: Target, dest: Path, *, timeout: float = 15.0) -> Path:
    if not NAME.match(name):
        raise BackupRefused(f"{name} is not a backup file name")
    out = dest / name
    with connect(target, timeout=timeout) as sftp:
        sftp.get(posixpath.join(target.directory, name), str(out))
    out.chmod(0o600)
    return out


def listing(sftp: paramiko.SFTPClient, directory: str) -> list[tuple[str, datetime]]:
    found = []
    for entry in sftp.listdir_attr(directory):
        m = NAME.match(entry.filename)
        if m and entry.st_mode is not None and stat.S_ISREG(entry.st_mode):
            found.append(
                (entry.filename, datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC))
            )
    return sorted(found, key=lambda x: x[1], reverse=True)


def to_prune(
    backups: list[tuple[str, datetime]], *, keep_last: int, keep_days: int, now: datetime
) -> list[str]:
    """Backups the policy lets go: not among the newest `keep_last`, and older than `keep_days`.

    Never all of them: keep_last must be at least 1.
    """
    if keep_last < 1 or keep_days < 0:
        raise BackupRefused("retention: keep-last must be >= 1 and keep-days >= 0")
    newest = sorted(backups, key=lambda x: x[1], reverse=True)
    horizon = now - timedelta(days=keep_days)
    return [name for i, (name, at) in enumerate(newest) if i >= keep_last and at < horizon]


def prune(
    target: Target, *, keep_last: int, keep_days: int, now: datetime, timeout: float = 15.0
) -> list[str]:
    with connect(target, timeout=timeout) as sftp:
        doomed = to_prune(listing(sftp, target.directory), keep_last=keep_last, keep_days=keep_days, now=now)
        for name in doomed:
            sftp.remove(posixpath.join(target.directory, name))
    return doomed


def backup_name(now: datetime) -> str:
    return f"strongroom-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.sbk"


def local_prune(directory: Path, *, keep_last: int, keep_days: int, now: datetime) -> list[str]:
    found = []
    for p in directory.iterdir():
        m = NAME.match(p.name)
        if m and p.is_file() and not p.is_symlink():
            found.append((p.name, datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)))
    doomed = to_prune(found, keep_last=keep_last, keep_days=keep_days, now=now)
    for name in doomed:
        (directory / name).unlink()
    return doomed
