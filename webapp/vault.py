"""The whole of keyd that the web app uses: `Vault`, exactly the `keyd.client.KeydClient` methods it
calls, so that anything else standing in for keyd is checked against the same interface.

- `status()`: the home page and the health check (is keyd there, is it unsealed), the key commands;
- `encrypt` / `decrypt`: the records service, for every stored card and item field and every reveal;
- `encrypt_batch`: the bulk import (webapp/records/bulk.py), three fields per card per item;
- `rewrap_batch`: the key rotation job (webapp/keys).

`MissingKeydClient` refuses every one of them with `Unavailable` (fail closed). `Sealed` or
`Unavailable` raised anywhere in a request becomes the 503 "vault is sealed / unavailable" page, with
the request's transaction rolled back (webapp/failures.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from keyd.errors import KeydError, Sealed, Unavailable

if TYPE_CHECKING:
    from keyd.client import Context, Status


class Vault(Protocol):
    def status(self) -> Status: ...

    def encrypt(self, plaintext: bytes, *, context: Context, actor: str, purpose: str) -> bytes: ...

    def decrypt(self, ciphertext: bytes, *, context: Context, actor: str, purpose: str) -> bytes: ...

    def encrypt_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]: ...

    def rewrap_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]: ...


class MissingKeydClient:
    """Stands in when no keyd client can be made: every call is `Unavailable` (fail closed)."""

    def _refuse(self) -> Unavailable:
        return Unavailable("the keyd client is not installed")

    def status(self) -> Status:
        raise self._refuse()

    def encrypt(self, plaintext: bytes, *, context: Context, actor: str, purpose: str) -> bytes:
        raise self._refuse()

    def decrypt(self, ciphertext: bytes, *, context: Context, actor: str, purpose: str) -> bytes:
        raise self._refuse()

    def encrypt_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        raise self._refuse()

    def rewrap_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        raise self._refuse()


def make_vault(socket_path: str, *, timeout: float) -> Vault:
    try:
        from keyd.client import KeydClient
    except ImportError:
        return MissingKeydClient()
    client: Vault = KeydClient(socket_path, timeout=timeout)
    return client


def require_open(vault: Vault) -> Status:
    status = vault.status()
    if status.sealed:
        raise Sealed("the vault is sealed")
    return status
