"""`keyd rekey`: hand keyd a new operator secret through the drop path, as `keyd unseal` does.

The secret never travels over the socket. The command arms keyd (an admin request naming the kind
of secret, and for a token its label), writes the secret to the drop file with keyd/unseal.py's
writer (no echo, 0600, keyd's user, renamed into place), waits until keyd took it, and reads back
whether keyd made the new secret generation. keyd checks the new secret before anything changes
(keyd/keyring.py, prepare_rekey); a refused one leaves keyd exactly as it was.
"""

from __future__ import annotations

import getpass
import hmac
import os
import time
from typing import TYPE_CHECKING

import click

from keyd.config import Config
from keyd.keysource import MIN_PASSPHRASE, wipe

if TYPE_CHECKING:
    from keyd.client import KeydAdminClient, Status


def _actor() -> str:
    actor = os.environ.get("SUDO_USER") or getpass.getuser()
    return "".join(c for c in actor if c.isalnum() or c in "._-")[:64] or "operator"


def rekey(config: Config, *, to: str, token_label: str, scrypt_n: int, from_stdin: bool, wait: float) -> None:
    from keyd.cli import Refused, StillSealed, UsageFailure, _drop_refusals, _print_status
    from keyd.client import KeydAdminClient
    from keyd.unseal import UnsealError, check_clear, drop_owner, place, read_secret, wait_taken

    kind = "pin" if to == "pkcs11" else to
    if kind == "pin" and not token_label:
        raise UsageFailure("rekey --to pkcs11 needs --new-token-label — the label of the new token")
    if kind != "pin" and token_label:
        raise UsageFailure("--new-token-label is for --to pkcs11 only — leave it out")
    if kind == "passphrase" and (scrypt_n < 2**14 or scrypt_n > 2**20 or scrypt_n & (scrypt_n - 1)):
        raise UsageFailure(
            "--scrypt-n must be a power of two from 16384 to 1048576 — leave it out for the default"
        )
    what = {"passphrase": "new passphrase", "raw": "new raw key (64 hex digits)", "pin": "new token's PIN"}[
        kind
    ]
    # The client's timeout outlasts scrypt: keyd answers status only after the re-key attempt ends.
    with (
        KeydAdminClient(config.socket, timeout=60.0) as client,
        _drop_refusals("rekey", "what to do: docs/key-rotation.md, 'Re-keying'"),
    ):
        before = client.status()
        if before.sealed:
            raise StillSealed("rekey: keyd is sealed — unseal it first; the re-key needs the current key")
        if len(before.generations) > 1:
            raise Refused(
                "rekey: the previous re-key is not finished (an old secret is still retained) — rewrap, "
                "retire and `retire-secret` first (docs/key-rotation.md)"
            )
        check_clear(config)  # before the operator types anything
        owner = drop_owner(config)
        secret = read_secret(f"keyd rekey: {what} (not shown): ", from_stdin=from_stdin)
        try:
            if not from_stdin:
                # A typo here is a secret nobody knows once the old one is retired: ask twice.
                again = read_secret(f"keyd rekey: the {what} again: ", from_stdin=False)
                same = hmac.compare_digest(bytes(secret).rstrip(b"\r\n"), bytes(again).rstrip(b"\r\n"))
                wipe(again)
                if not same:
                    raise UnsealError("the two entries differ: nothing was written")
            if kind == "passphrase" and len(secret.rstrip(b"\r\n")) < MIN_PASSPHRASE:
                raise UnsealError(f"a passphrase must be at least {MIN_PASSPHRASE} characters")
            client.rekey(kind, actor=_actor(), scrypt_n=scrypt_n, token_label=token_label)
            ident = place(secret, config, owner)
        finally:
            wipe(secret)
        wait_taken(config.drop_path, ident, wait)
        status = _done(client)
    _print_status(status)
    if status.generation != before.generation + 1:
        raise Refused(
            "rekey: keyd took the new secret and refused it; nothing changed — its rekey_refused event "
            "says why; run rekey again"
        )
    click.echo(
        f"keyd rekey: secret generation {status.generation} made; new writes use key version "
        f"{status.key_version}. Until `retire-secret`, a restart needs the old secret, then the new one. "
        "Next: flask --app webapp keys rewrap; keys retire --min-version "
        f"{status.key_version}; python -m keyd retire-secret",
        err=True,
    )


def _done(client: KeydAdminClient) -> Status:
    """keyd's state once it has tried the new secret (it holds its lock while it does)."""
    deadline = time.monotonic() + 60.0
    while True:
        status = client.status()
        if not status.rekey_armed or time.monotonic() > deadline:
            return status
        time.sleep(0.1)
