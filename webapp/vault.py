"""The narrow view of keyd that the web app depends on (the real one is `keyd.client.KeydClient`).

Only `status()` is used in this issue: the home page and the health check. `Sealed` or `Unavailable`
raised anywhere in a request becomes the 503 "vault is sealed / unavailable" page, with the request's
transaction rolled back.
"""

from __future__ import annotations

from typing import Protocol

from keyd.errors import Sealed, Unavailable


class VaultStatus(Protocol):
    @property
    def sealed(self) -> bool: ...


class Vault(Protocol):
    def status(self) -> VaultStatus: ...


class MissingKeydClient:
    """Stands in while keyd.client is not installed: every call is `Unavailable` (fail closed)."""

    def status(self) -> VaultStatus:
        raise Unavailable("the keyd client is not installed")


def make_vault(socket_path: str, *, timeout: float) -> Vault:
    try:
        from keyd.client import KeydClient
    except ImportError:
        return MissingKeydClient()
    client: Vault = KeydClient(socket_path, timeout=timeout)
    return client


def require_open(vault: Vault) -> VaultStatus:
    status = vault.status()
    if status.sealed:
        raise Sealed("the vault is sealed")
    return status
