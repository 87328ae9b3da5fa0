"""The backup file: an age-encrypted archive, signed by the server.

Layout::

    MAGIC (24 bytes)   b"STRONGROOM-BACKUP v1\\n" padded with NULs
    body               age v1 ciphertext (X25519 recipient; ChaCha20-Poly1305 STREAM chunks)
    signature (64)     Ed25519 over DOMAIN || SHA-512(MAGIC || body)

Two keys, two jobs:
- age encrypts to the backup *recipient* (public). Its identity (private half) is kept offline, so
  the server cannot read its own backups and neither can whoever stores them. age's STREAM detects
  any changed, reordered or missing chunk, including a truncated end.
- anyone holding the recipient (it is public) could make a whole new, valid age file. The Ed25519
  signature, made with a key that only the server holds, proves the backup came from the server;
  it is checked first, before a single byte is decrypted, and can be checked without the offline
  key (after an upload, on the remote copy).

Every failure is one exception, `BackupRefused`, with a reason that names what failed and never
any content.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO

import pyrage  # type: ignore[import-untyped]  # ships no type information
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common import atomic

MAGIC = b"STRONGROOM-BACKUP v1\n".ljust(24, b"\0")
DOMAIN = b"strongroom backup signature v1\0"
SIG_LEN = 64
AGE_PREFIX = b"age-encryption.org/v1\n"
# A backup is built and opened in memory: refuse anything larger than this before reading it.
MAX_BACKUP_BYTES = 2 * 1024**3
_CHUNK = 1 << 20


class BackupRefused(Exception):
    """The backup (or a key for it) is not acceptable; `str()` says why, without content."""


# --- keys ---------------------------------------------------------------------------------------


def _read_secret_file(path: Path) -> str:
    st = path.stat()
    if st.st_mode & 0o077:
        raise BackupRefused(f"{path} is readable by others (mode {st.st_mode & 0o777:o}): chmod 600 it")
    return path.read_text().strip()


def check_not_writable_by_others(path: Path) -> None:
    """Public but trusted files (recipient, pinned host keys, verify key): whoever may rewrite one
    could redirect backups to their own key or their own server."""
    st = path.stat()
    if st.st_mode & 0o022:
        raise BackupRefused(f"{path} is writable by others (mode {st.st_mode & 0o777:o}): chmod go-w it")


def load_recipient(text_or_path: str) -> object:
    """An age recipient (`age1...`), given inline or as a file holding one."""
    text = text_or_path
    if not text.startswith("age1") and Path(text).is_file():
        check_not_writable_by_others(Path(text))
        text = Path(text).read_text().strip()
    try:
        return pyrage.x25519.Recipient.from_str(text)
    except Exception:  # noqa: BLE001 - pyrage raises its own error type for a bad key
        raise BackupRefused("the backup recipient is not an age X25519 public key (age1...)") from None


def load_identity(path: Path) -> object:
    """The offline age identity (`AGE-SECRET-KEY-1...`); the file must be private."""
    lines = [ln for ln in _read_secret_file(path).splitlines() if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise BackupRefused(f"{path} must hold exactly one age identity")
    try:
        return pyrage.x25519.Identity.from_str(lines[0])
    except Exception:  # noqa: BLE001
        raise BackupRefused(f"{path} does not hold an age X25519 identity") from None


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read_secret_file(path).encode(), password=None)
    except ValueError:
        raise BackupRefused(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BackupRefused(f"{path} is not an Ed25519 key")
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    check_not_writable_by_others(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError:
        raise BackupRefused(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BackupRefused(f"{path} is not an Ed25519 public key")
    return key


def new_identity() -> tuple[str, str]:
    """(identity, recipient) as text: a fresh age X25519 key pair for the offline side."""
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def new_signing_key() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a fresh Ed25519 signing key for the server."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


# --- seal and open ----------------------------------------------------------------------------


def _message(digest: bytes) -> bytes:
    return DOMAIN + digest


def seal(plaintext: bytes, *, recipient: object, signing_key: Ed25519PrivateKey, out: Path) -> None:
    """Encrypt `plaintext` to the recipient, sign, and write `out` atomically (never half a file)."""
    body = io.BytesIO()
    try:
        pyrage.encrypt_io(io.BytesIO(plaintext), body, [recipient])
    except Exception as exc:  # noqa: BLE001
        raise BackupRefused(f"age encryption failed ({type(exc).__name__})") from None
    digest = hashlib.sha512(MAGIC + body.getvalue()).digest()
    signature = signing_key.sign(_message(digest))
    # Never half a backup, not even under a temporary name; the body is not copied to be joined.
    atomic.write_chunks(out, (MAGIC, body.getbuffer(), signature), mode=0o600)


def check_signature(f: BinaryIO, size: int, verify_key: Ed25519PublicKey) -> None:
    """Check magic and signature of an open backup of `size` bytes; reads it once, in chunks."""
    if size > MAX_BACKUP_BYTES:
        raise BackupRefused("the backup is larger than the 2 GiB this tool handles")
    if size < len(MAGIC) + len(AGE_PREFIX) + SIG_LEN:
        raise BackupRefused("the backup is truncated (too short)")
    head = f.read(len(MAGIC))
    if head != MAGIC:
        raise BackupRefused("not a Strongroom backup (bad magic)")
    h = hashlib.sha512(MAGIC)
    left = size - len(MAGIC) - SIG_LEN
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise BackupRefused("the backup is truncated")
        h.update(chunk)
        left -= len(chunk)
    signature = f.read(SIG_LEN)
    if len(signature) != SIG_LEN or f.read(1):
        raise BackupRefused("the backup is truncated or has trailing bytes")
    try:
        verify_key.verify(signature, _message(h.digest()))
    except InvalidSignature:
        raise BackupRefused(
            "the backup's signature does not verify: tampered, truncated, or not ours"
        ) from None


def open_sealed(path: Path, *, verify_key: Ed25519PublicKey, identity: object) -> bytes:
    """Signature first, then age decryption; returns the plaintext archive."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_signature(f, size, verify_key)
        f.seek(len(MAGIC))
        body = f.read(size - len(MAGIC) - SIG_LEN)
    if not body.startswith(AGE_PREFIX):
        raise BackupRefused("the backup body is not an age file")
    out = io.BytesIO()
    try:
        pyrage.decrypt_io(io.BytesIO(body), out, [identity])
    except pyrage.DecryptError:
        raise BackupRefused(
            "the backup cannot be decrypted with this identity (wrong offline key?)"
        ) from None
    except (OSError, ValueError):
        raise BackupRefused("the backup's encrypted body is damaged (age authentication failed)") from None
    return out.getvalue()
