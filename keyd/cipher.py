"""AES-256-GCM over keyd's ciphertext format, with the caller's context as associated data.

The layout of a ciphertext (header, nonce, ciphertext+tag) is keyd/envelope.py's; this module does
the cryptography: per-version keys, sealing, opening, key check values.

The associated data is the envelope's header plus the length-prefixed record id and field name, so a
ciphertext moved to another row or field, or relabelled with another key version, fails to decrypt
(the idea of HashiCorp Vault's barrier, which binds the storage path the same way).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyd.envelope import NONCE_LEN, header, join

KEY_LEN = 32
# NIST SP 800-38D: at most 2**32 random-nonce invocations per key. Stop well short of it.
MAX_ENCRYPTIONS_PER_VERSION = 2**31

KCV_PLAINTEXT = b"strongroom keyd key check value"


class AuthenticationFailed(Exception):
    """The tag did not verify: wrong key, wrong context, or a tampered ciphertext."""


class Aead(Protocol):
    """One key version's AES-256-GCM. Implementations: FileAead here, TokenAead in keysource."""

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes: ...


class FileAead:
    """A version key held in this process (file mode), used through pyca/cryptography."""

    __slots__ = ("_gcm", "seal")

    def __init__(self, key: bytes | bytearray) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("an AES-256 key is 32 bytes")
        self._gcm = AESGCM(key)
        # seal(nonce, plaintext, aad) is the library call itself: no Python frame per field.
        self.seal: Callable[[bytes, bytes, bytes], bytes] = self._gcm.encrypt

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._gcm.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise AuthenticationFailed from None


def derive_version_key(master: bytes | bytearray | memoryview, *, salt: bytes, version: int) -> bytearray:
    """The data key of one version, from the operator's master key (HKDF-SHA256, version in info).

    Rotation therefore needs no new operator secret, and every version stays recoverable from the
    one master until the operator retires it.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=b"strongroom keyd v%d" % version)
    return bytearray(hkdf.derive(master))


def associated_data(head: bytes, record_id: bytes, field: bytes) -> bytes:
    # Lengths are < 256 (the wire protocol's identifier limits); the prefixes make it unambiguous.
    lens = _LENGTH_BYTES
    return b"".join((head, lens[len(record_id)], record_id, lens[len(field)], field))


def encrypt(aead: Aead, version: int, plaintext: bytes, record_id: bytes, field: bytes) -> bytes:
    head = header(version)
    nonce = os.urandom(NONCE_LEN)
    lens = _LENGTH_BYTES
    aad = b"".join((head, lens[len(record_id)], record_id, lens[len(field)], field))
    return join(head, nonce, aead.seal(nonce, plaintext, aad))


_LENGTH_BYTES = [bytes((i,)) for i in range(256)]


def encrypt_many(
    aead: Aead, version: int, items: Sequence[tuple[bytes, bytes, bytes, object]]
) -> list[bytes]:
    """Encrypt (record id, field, plaintext, error) items under one version: one header, one urandom
    call. The items are the wire protocol's parsed items, passed as they are; one that carries an
    error must never get here, and if it does the whole call fails (closed) before anything is returned.
    """
    head = header(version)
    nonces = os.urandom(NONCE_LEN * len(items))
    seal = aead.seal
    lens = _LENGTH_BYTES
    out: list[bytes] = []
    add = out.append
    pos = 0
    for record_id, field, plaintext, error in items:
        if error is not None:
            raise ValueError("an item that failed validation reached encryption")
        nonce = nonces[pos : pos + NONCE_LEN]
        pos += NONCE_LEN
        aad = b"".join((head, lens[len(record_id)], record_id, lens[len(field)], field))
        # envelope.join, inlined: a call per field costs ~80 ns, 2-3 % of a batch (tests/keyd/test_cipher.py
        # checks that what this makes splits back).
        add(b"".join((head, nonce, seal(nonce, plaintext, aad))))
    return out


def kcv_aad(version: int) -> bytes:
    return b"strongroom keyd key check v%d" % version


def make_kcv(aead: Aead, version: int) -> tuple[bytes, bytes]:
    """A key check value: an encryption of a constant, verified by decrypting it at unseal."""
    nonce = os.urandom(NONCE_LEN)
    return nonce, aead.seal(nonce, KCV_PLAINTEXT, kcv_aad(version))


def check_kcv(aead: Aead, version: int, nonce: bytes, value: bytes) -> bool:
    try:
        return aead.open(nonce, value, kcv_aad(version)) == KCV_PLAINTEXT
    except AuthenticationFailed:
        return False
