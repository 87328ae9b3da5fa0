"""`keyd unseal`: the operator's secret into the drop file, without echo and without a shell pipeline.

It does what docs/runbook.md 1.3 does by hand, with the checks keyd makes on the file
(keyd/keysource.py) built in: the file is created under a temporary name next to the drop path with
O_CREAT|O_EXCL|O_NOFOLLOW (a planted file or symlink makes it fail, nothing is followed), mode 0600,
owned by keyd's user, then renamed onto the drop path so keyd only ever sees it complete. Then it
waits until keyd has taken (read and deleted) the file, and removes the file itself if keyd does not
take it in time: a secret never stays behind on tmpfs because of this command.

Owner: root creates the file and fchowns it to keyd's user before writing a byte. That is the
simplest correct way: no child process switching its effective uid, and the file is 0600 from its
creation, so whoever owns it in between (root, then keyd's user) nobody else can read it. keyd can
delete it from the sticky /dev/shm because keyd's user owns it.

The secret is read into a bytearray (not getpass's str) and overwritten once written, like keyd
does with everything it reads from the drop file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

from keyd import hardening
from keyd.config import Config
from keyd.keysource import MAX_DROP_SIZE, wipe


class UnsealError(Exception):
    """A refusal to go on. The message is for the operator and never holds the secret."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def temp_path(config: Config) -> Path:
    """The temporary name: the one docs/runbook.md 1.3 uses by hand, so a leftover from either is found."""
    return config.drop_path.with_name(config.drop_path.name + "-tmp")


def drop_owner(config: Config) -> tuple[int, int]:
    """The uid and gid the drop file must have: keyd's user, or the caller if drop_uids allows it."""
    if config.user is not None:
        try:
            keyd_id = hardening.resolve_user(config.user)
        except KeyError:
            raise UnsealError(f"keyd's user {config.user!r} does not exist") from None
    else:
        keyd_id = (os.geteuid(), os.getegid())  # keyd runs as whoever started it, like this command
    allowed = config.drop_uids or frozenset({keyd_id[0]})
    if keyd_id[0] in allowed:
        return keyd_id
    if os.geteuid() in allowed:
        return os.geteuid(), os.getegid()
    raise UnsealError("neither keyd's user nor you are in drop_uids: keyd would refuse the file")


def check_clear(config: Config) -> None:
    """Refuse when something already sits at the drop path or the temporary name."""
    for path, what in ((config.drop_path, "the drop path"), (temp_path(config), "the temporary name")):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file"
        raise UnsealError(
            f"{path} ({what}) already exists, {kind} owned by uid {st.st_uid}: another operator's drop in "
            "progress or a planted file. Nothing was written; investigate, remove it, and run unseal again"
        )


# --- reading the secret ---------------------------------------------------------------------------


def _read_into(fd: int, *, stop_at_newline: bool) -> bytearray:
    """Read up to MAX_DROP_SIZE bytes from `fd` into a bytearray (no immutable copies)."""
    buf = bytearray(MAX_DROP_SIZE + 1)
    view = memoryview(buf)
    n = 0
    try:
        while n <= MAX_DROP_SIZE:
            got = os.readv(fd, [view[n:]])
            if got == 0:
                break
            n += got
            if stop_at_newline and buf[n - 1] == 0x0A:
                break
        if n > MAX_DROP_SIZE:
            raise UnsealError(f"more than {MAX_DROP_SIZE} bytes: keyd would refuse it")
        secret = bytearray(view[:n])
    finally:
        view.release()
        wipe(buf)
    if not secret.strip(b"\r\n"):
        wipe(secret)
        raise UnsealError("nothing was typed: nothing was written")
    return secret


@contextlib.contextmanager
def _no_echo(fd: int) -> Iterator[None]:
    """Line mode with echo off (what getpass does), restored whatever happens, even on Ctrl-C."""
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~(termios.ECHO | termios.ECHONL)
    termios.tcsetattr(fd, termios.TCSAFLUSH, new)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, old)


def read_secret(prompt: str, *, from_stdin: bool) -> bytearray:
    """The secret from the terminal without echo, or (only when asked to) from a pipe on stdin."""
    if from_stdin:
        if sys.stdin.isatty():
            raise UnsealError(
                "--stdin reads a pipe; on a terminal, leave it out and type at the prompt", usage=True
            )
        return _read_into(sys.stdin.fileno(), stop_at_newline=False)
    if not sys.stdin.isatty():
        raise UnsealError(
            "stdin is not a terminal: type the secret at a terminal, or pass --stdin", usage=True
        )
    # The controlling terminal, like getpass: the prompt reaches the operator even with stderr redirected.
    tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        with _no_echo(tty):
            os.write(tty, prompt.encode())
            try:
                return _read_into(tty, stop_at_newline=True)
            finally:
                os.write(tty, b"\n")  # the operator's Enter was not echoed
    finally:
        os.close(tty)


# --- the drop file --------------------------------------------------------------------------------


def place(secret: bytearray, config: Config, owner: tuple[int, int]) -> tuple[int, int]:
    """Write `secret` under the temporary name and rename it onto the drop path. Returns (dev, ino)."""
    tmp = temp_path(config)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:
        raise UnsealError(f"{tmp} appeared meanwhile (file or symbolic link): nothing was written") from None
    except OSError as exc:
        raise UnsealError(f"cannot create {tmp}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask: exactly what keyd accepts
            if os.geteuid() != owner[0]:
                try:
                    os.fchown(fd, *owner)  # before the first byte: the file is 0600 all along
                except PermissionError:
                    raise UnsealError(
                        "cannot give the drop file to keyd's user: run unseal as root or as keyd's user"
                    ) from None
            view = memoryview(secret)
            try:
                written = 0
                while written < len(secret):
                    written += os.write(fd, view[written:])
            finally:
                view.release()
        except BaseException:
            _remove_if_ours(tmp, ident)
            raise
    finally:
        os.close(fd)
    try:
        if os.path.lexists(config.drop_path):
            raise UnsealError(f"{config.drop_path} appeared meanwhile: nothing was handed to keyd")
        os.rename(tmp, config.drop_path)
    except BaseException:
        _remove_if_ours(tmp, ident)
        raise
    return ident


def _remove_if_ours(path: Path, ident: tuple[int, int]) -> bool:
    """Delete `path` only if it is still the file this command created (never someone else's)."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) != ident:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def wait_taken(path: Path, ident: tuple[int, int], timeout: float) -> None:
    """Wait until keyd has deleted our file. Past `timeout` (or on Ctrl-C) delete it ourselves."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return
            if (st.st_dev, st.st_ino) != ident:
                return  # ours is gone; whatever is there now is not ours to judge or delete
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    except BaseException:
        _remove_if_ours(path, ident)
        raise
    removed = _remove_if_ours(path, ident)
    raise UnsealError(
        f"keyd did not take {path} within {timeout:g} s"
        + (": removed it again" if removed else "")
        + ". Is keyd watching this drop path? A refused file is named in keyd's drop_file_refused event"
    )


# --- custodian shares -----------------------------------------------------------------------------


def operator_login() -> str:
    """Who runs this command, as keyd records it: the sudo caller, else the login (an identifier only)."""
    import getpass

    login = os.environ.get("SUDO_USER") or getpass.getuser()
    kept = "".join(c for c in login if c.isascii() and (c.isalnum() or c in "._-")).lstrip("._-")
    return kept[:64] or "operator"


def share_delivery(secret: bytearray, login: str) -> tuple[int, bytearray]:
    """The share's index, and the drop file's content: the share's line, then `login=NAME`, which
    keyd records with the delivery (the file itself is owned by keyd's user, not by the custodian).

    The share is checked here first (format and check value), so a typo is caught before anything is
    written. Wipes `secret`; the caller wipes the content.
    """
    from keyd.shares import ShareRefused, parse_share

    try:
        try:
            index, value = parse_share(secret)
        except ShareRefused as exc:
            raise UnsealError(
                f"that is not a valid share ({exc.reason.value}): nothing was written; type it again, "
                "exactly as written down"
            ) from None
        wipe(value)
        content = secret.strip(b" \t\r\n")
        content += b"\nlogin=" + login.encode("ascii") + b"\n"
        return index, content
    finally:
        wipe(secret)
