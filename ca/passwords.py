"""Bundle passwords and CA passphrases: generate, check strength, read from a private file.

Secrets are never taken on the command line (argv is visible in `ps` and lands in shell history)
and never from the environment (it is inherited by every child, including the web app command
this tool runs). They come from a prompt or from a file only its owner can read.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from zxcvbn import zxcvbn

from ca.errors import CAError, UnsafeEnvironment, WeakSecret

# No 0/O/o, 1/l/I: the password is read off a screen and typed into a browser's import dialog.
ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
MIN_LENGTH = 12
MIN_SCORE = 3  # zxcvbn: "safely unguessable: moderate protection from offline slow-hash scenario"


def generate_password(groups: int = 5, group_len: int = 5) -> str:
    """25 characters from a 55-letter alphabet (~144 bits), in dash-separated groups for reading aloud."""
    return "-".join("".join(secrets.choice(ALPHABET) for _ in range(group_len)) for _ in range(groups))


def check_strength(secret: str, *, what: str, context: list[str]) -> None:
    """Refuse a typed secret that is short or guessable (names of the holder count as guessable)."""
    if len(secret) < MIN_LENGTH:
        raise WeakSecret(
            f"the {what} is too short: use at least {MIN_LENGTH} characters (nothing was changed)"
        )
    result = zxcvbn(secret, user_inputs=context)
    if result["score"] < MIN_SCORE:
        hint = result["feedback"].get("warning") or "add more unrelated words or characters"
        raise WeakSecret(
            f"the {what} is too easy to guess (strength {result['score']}/4, need {MIN_SCORE}): {hint} "
            "(nothing was changed)"
        )


def read_secret_file(path: Path, *, what: str) -> bytes:
    """A passphrase from a file: must be a regular file of ours (or root's) that nobody else can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise CAError(f"the {what} file {path} does not exist") from None
    except OSError as e:
        raise CAError(f"cannot open the {what} file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # checked before reading: a directory or FIFO is refused
            raise UnsafeEnvironment(f"the {what} file {path} is not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise UnsafeEnvironment(f"the {what} file {path} must be owned by you or by root")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise UnsafeEnvironment(f"the {what} file {path} is readable by others: chmod 600 {path}")
        data = os.read(fd, 4097)
    finally:
        os.close(fd)
    if len(data) > 4096:
        raise CAError(f"the {what} file {path} is too large to be a passphrase")
    data = data.removesuffix(b"\n")
    if not data:
        raise CAError(f"the {what} file {path} is empty")
    return data
