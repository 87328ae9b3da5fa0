"""Where the key comes from: the operator's drop file, stretched or raw, or a PKCS#11 token.

The drop file is the only way a secret enters keyd. It sits on tmpfs for seconds at most, so keyd
treats it as hostile until proven otherwise: opened without following links and without blocking,
checked on the open descriptor (regular file, one link, allowed owner, mode 0600/0400, small), read,
unlinked at once, and the path checked again to make sure it is really gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from keyd.cipher import KEY_LEN, AuthenticationFailed

MAX_DROP_SIZE = 4096
MIN_PASSPHRASE = 16


class DropRefusal(StrEnum):
    SYMLINK = "symlink"
    NOT_REGULAR = "not_regular_file"
    WRONG_OWNER = "wrong_owner"
    BAD_MODE = "bad_mode"
    HARD_LINK = "hard_link"
    EMPTY = "empty"
    OVERSIZED = "oversized"
    DELETED_EARLY = "deleted_early"
    REPLACED = "replaced"
    NOT_DELETED = "not_deleted"
    UNREADABLE = "unreadable"


class DropRefused(Exception):
    def __init__(self, reason: DropRefusal, *, uid: int | None = None, mode: int | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.uid = uid
        self.mode = mode


@dataclass(frozen=True)
class DropIdentity:
    """What a refused drop file looked like, so one bad file is reported once, not every poll."""

    reason: DropRefusal
    dev: int
    ino: int
    mtime_ns: int


def open_drop(path: Path) -> int | None:
    """Open the drop file if there is one. None when absent. Never follows a link, never blocks."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DropRefused(DropRefusal.SYMLINK) from None
        raise DropRefused(DropRefusal.UNREADABLE) from None


def consume_drop(fd: int, path: Path, *, allowed_uids: frozenset[int]) -> bytearray:
    """Check, read and delete the drop file opened as `fd`. Returns its content; closes `fd`.

    The checks run on the descriptor, so a file swapped in after the open cannot slip past them.
    """
    return consume_drop_owned(fd, path, allowed_uids=allowed_uids)[0]


def consume_drop_owned(fd: int, path: Path, *, allowed_uids: frozenset[int]) -> tuple[bytearray, int]:
    """consume_drop, and the uid that owned the file: who delivered a custodian share."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DropRefused(DropRefusal.NOT_REGULAR)
        if st.st_uid not in allowed_uids:
            raise DropRefused(DropRefusal.WRONG_OWNER, uid=st.st_uid)
        if stat.S_IMODE(st.st_mode) not in (0o600, 0o400):
            raise DropRefused(DropRefusal.BAD_MODE, mode=stat.S_IMODE(st.st_mode))
        if st.st_nlink == 0:
            # Someone else unlinked it before we could: they may have read it too.
            raise DropRefused(DropRefusal.DELETED_EARLY)
        if st.st_nlink != 1:
            # A second name would survive our unlink, keeping the secret on disk.
            raise DropRefused(DropRefusal.HARD_LINK)
        if st.st_size == 0:
            raise DropRefused(DropRefusal.EMPTY)
        if st.st_size > MAX_DROP_SIZE:
            raise DropRefused(DropRefusal.OVERSIZED)
        buf = bytearray(MAX_DROP_SIZE + 1)
        n = os.readv(fd, [buf])
        content = buf[:n]
        wipe(buf)
        if n > MAX_DROP_SIZE:
            wipe(content)
            raise DropRefused(DropRefusal.OVERSIZED)
        if n == 0:
            raise DropRefused(DropRefusal.EMPTY)
        try:
            _unlink_same(path, st)
        except DropRefused:
            wipe(content)
            raise
        return content, st.st_uid
    finally:
        os.close(fd)


def _unlink_same(path: Path, st: os.stat_result) -> None:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        raise DropRefused(DropRefusal.DELETED_EARLY) from None
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise DropRefused(DropRefusal.REPLACED)
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise DropRefused(DropRefusal.DELETED_EARLY) from None
    except OSError:
        raise DropRefused(DropRefusal.NOT_DELETED) from None
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    raise DropRefused(DropRefusal.NOT_DELETED)


def wipe(buf: bytearray | memoryview) -> None:
    """Overwrite a mutable buffer. Copies Python made elsewhere (bytes, str) are out of reach."""
    buf[:] = bytes(len(buf))


def strip_line(content: bytearray) -> bytearray:
    """What the operator typed into `cat`: drop one trailing newline (and a CR before it)."""
    end = len(content)
    if end and content[end - 1] == 0x0A:
        end -= 1
        if end and content[end - 1] == 0x0D:
            end -= 1
    return content[:end]


_HEX_DIGITS = {c: i for i, c in enumerate(b"0123456789abcdef")} | {c: i for i, c in enumerate(b"ABCDEF", 10)}


def raw_key(content: bytearray) -> bytearray:
    """A raw 256-bit key is given as 64 hex digits. Raises ValueError otherwise.

    Decoded digit by digit into a bytearray: bytes.fromhex would leave an immutable str and bytes
    copy of the key behind.
    """
    text = strip_line(content)
    key = bytearray(KEY_LEN)
    try:
        if len(text) != 2 * KEY_LEN:
            raise ValueError("a raw key is 64 hex digits")
        for i in range(KEY_LEN):
            hi = _HEX_DIGITS.get(text[2 * i])
            lo = _HEX_DIGITS.get(text[2 * i + 1])
            if hi is None or lo is None:
                raise ValueError("a raw key is 64 hex digits")
            key[i] = hi << 4 | lo
        return key
    except ValueError:
        wipe(key)
        raise
    finally:
        wipe(text)


def stretch(passphrase: bytearray, *, salt: bytes, n: int, r: int, p: int) -> bytearray:
    """The master key from a passphrase: scrypt, memory-hard, parameters kept in the state."""
    secret = strip_line(passphrase)
    try:
        maxmem = 2 * 128 * r * n + (16 << 20)
        return bytearray(hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=KEY_LEN))
    finally:
        wipe(secret)


# --- PKCS#11 -----------------------------------------------------------------------------------


class TokenError(Exception):
    """The token could not be opened, the PIN was refused, or a key is missing."""


class WrongPin(TokenError):
    pass


# SoftHSM crashes when several threads call into it under python-pkcs11's default
# C_Initialize(NULL) (measured: SoftHSM2 2.6.1 with python-pkcs11 0.10.1 segfaulted or corrupted its
# heap). Every PKCS#11 call in this process goes through this lock.
TOKEN_LOCK = threading.Lock()

TOKEN_KEY_PREFIX = "strongroom-keyd-v"  # noqa: S105 - a key label, not a secret


def token_key_label(version: int) -> str:
    return f"{TOKEN_KEY_PREFIX}{version}"


class Token:
    """A logged-in session on the configured token. Loaded lazily: after any fork, never before."""

    def __init__(self, module: str, token_label: str, pin: str) -> None:
        import pkcs11

        self._pkcs11 = pkcs11
        with TOKEN_LOCK:
            try:
                lib = pkcs11.lib(module)
                token = lib.get_token(token_label=token_label)
            except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
                raise TokenError(f"cannot open token {token_label!r}: {type(exc).__name__}") from None
            try:
                self._session = token.open(user_pin=pin, rw=True)
            except pkcs11.exceptions.PinIncorrect:
                raise WrongPin("the token refused the PIN") from None
            except pkcs11.PKCS11Error as exc:
                raise TokenError(f"cannot log in to token: {type(exc).__name__}") from None

    def generate_key(self, label: str) -> TokenAead:
        from pkcs11 import Attribute, KeyType

        with TOKEN_LOCK:
            if self._find(label) is not None:
                raise TokenError(f"the token already holds a key labelled {label!r}")
            key = self._session.generate_key(
                KeyType.AES,
                256,
                label=label,
                store=True,
                template={
                    Attribute.TOKEN: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                },
            )
            return TokenAead(self._working_copy(key))

    def _working_copy(self, key: Any) -> Any:
        # SoftHSM re-checks its object store on every use of a token object, which costs a third of
        # its speed. A session copy stays inside the token (C_CopyObject), keeps SENSITIVE and
        # non-EXTRACTABLE, and disappears when the session closes at seal.
        return key.copy({self._pkcs11.Attribute.TOKEN: False})

    def _find(self, label: str) -> Any:
        from pkcs11 import KeyType, ObjectClass

        found = list(
            self._session.get_objects(
                {
                    self._pkcs11.Attribute.CLASS: ObjectClass.SECRET_KEY,
                    self._pkcs11.Attribute.KEY_TYPE: KeyType.AES,
                    self._pkcs11.Attribute.LABEL: label,
                }
            )
        )
        if len(found) > 1:
            raise TokenError(f"the token holds {len(found)} keys labelled {label!r}")
        return found[0] if found else None

    def key(self, label: str) -> TokenAead:
        with TOKEN_LOCK:
            key = self._find(label)
            if key is None:
                raise TokenError(f"the token holds no key labelled {label!r}")
            return TokenAead(self._working_copy(key))

    def close(self) -> None:
        # Closing a dead session: nothing left to protect.
        with TOKEN_LOCK, contextlib.suppress(self._pkcs11.PKCS11Error):
            self._session.close()


class TokenAead:
    """AES-256-GCM inside the token: the key never leaves it (SENSITIVE, not EXTRACTABLE)."""

    __slots__ = ("_auth_errors", "_gcm", "_key", "_params")

    def __init__(self, key: Any) -> None:
        from pkcs11 import Mechanism, exceptions
        from pkcs11.mechanisms import GCMParams

        self._key = key
        self._gcm = Mechanism.AES_GCM
        self._params = GCMParams
        # SoftHSM reports a bad tag as GeneralError; anything else is a token fault, not tampering.
        self._auth_errors = (exceptions.GeneralError, exceptions.EncryptedDataInvalid)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        with TOKEN_LOCK:
            return bytes(
                self._key.encrypt(plaintext, mechanism=self._gcm, mechanism_param=self._params(nonce, aad))
            )

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        with TOKEN_LOCK:
            try:
                return bytes(
                    self._key.decrypt(
                        ciphertext, mechanism=self._gcm, mechanism_param=self._params(nonce, aad)
                    )
                )
            except self._auth_errors:
                raise AuthenticationFailed from None
