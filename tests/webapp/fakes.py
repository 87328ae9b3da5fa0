"""An in-memory stand-in for keyd, for the web app tests that are not about keyd itself.

`FakeVault` implements the whole of `webapp.vault.Vault` (tests/webapp/test_vault.py holds it to
KeydClient's signatures). It keeps what a test relies on from the real one: a sealed vault refuses
with `Sealed`, a ciphertext carries keyd's header (format byte and key version), holds no plaintext
and opens only under the context it was sealed with (`IntegrityFailure` otherwise); `error` makes
every call fail as keyd can (unreachable, a spent decrypt budget). The suites about keyd, encryption
or what reaches the database use the real keyd (tests/webapp/records/support.py).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence

from keyd.client import Context, Status
from keyd.errors import IntegrityFailure, KeydError, Sealed


class FakeVault:
    def __init__(self) -> None:
        self.sealed = False
        self.error: Exception | None = None  # raised by every call while set (keyd down, a spent budget)
        self.key_version = 1
        self._sealed_values: dict[bytes, tuple[Context, bytes]] = {}

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.sealed:
            raise Sealed("the fake vault is sealed")

    def _seal(self, plaintext: bytes, context: Context) -> bytes:
        # keyd's public header (u8 format 1, u32 key version), then random bytes where keyd has the
        # nonce and the ciphertext: keyd.client.key_version reads it, and no plaintext is in it.
        blob = struct.pack(">BI", 1, self.key_version) + secrets.token_bytes(28)
        self._sealed_values[blob] = (context, plaintext)
        return blob

    def _open(self, ciphertext: bytes, context: Context) -> bytes:
        found = self._sealed_values.get(bytes(ciphertext))
        if found is None or found[0] != context:
            raise IntegrityFailure("the fake vault cannot open this value under this context")
        return found[1]

    def status(self) -> Status:
        if self.error is not None:
            raise self.error
        return Status(sealed=self.sealed, key_version=self.key_version, min_decrypt_version=1, mode="fake")

    def encrypt(self, plaintext: bytes, *, context: Context, actor: str, purpose: str) -> bytes:
        self._check()
        return self._seal(plaintext, context)

    def decrypt(self, ciphertext: bytes, *, context: Context, actor: str, purpose: str) -> bytes:
        self._check()
        return self._open(ciphertext, context)

    def encrypt_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        self._check()
        return [self._seal(plaintext, context) for context, plaintext in items]

    def rewrap_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        self._check()
        results: list[bytes | KeydError] = []
        for context, blob in items:
            try:
                results.append(self._seal(self._open(blob, context), context))
            except IntegrityFailure as exc:
                results.append(exc)
        return results
