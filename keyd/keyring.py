"""The key ring: the per-version AEADs of an unsealed keyd, and how one is opened, created and closed.

File mode derives every version's key from the operator's master (kept in a locked page for
rotation); PKCS#11 mode holds a logged-in token session and a handle per version. Either way every
version's key check value is verified before the ring is used, so a wrong secret never encrypts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from keyd import cipher
from keyd.config import Config
from keyd.hardening import LockedSecret
from keyd.keysource import Token, TokenError, WrongPin, raw_key, stretch, strip_line, token_key_label, wipe
from keyd.shares import combined_master
from keyd.state import State, Version


class WrongKey(Exception):
    """The dropped key, passphrase or PIN does not match the state's key check values."""


@dataclass
class Keyring:
    """An unsealed keyd's key material: one AEAD per key version, and encryptions counted per version."""

    aeads: dict[int, cipher.Aead]
    master: LockedSecret | None = None  # file mode: kept to derive new versions at rotation
    token: Token | None = None  # pkcs11 mode: the logged-in session
    counts: dict[int, int] = field(default_factory=dict)


def open_keyring(state: State, secret: bytearray, config: Config) -> Keyring:
    """Turn the operator's secret into a verified keyring. Raises WrongKey. Wipes `secret`."""
    try:
        if state.mode == "file":
            try:
                if state.key_kind == "raw":
                    master = raw_key(secret)
                elif state.key_kind == "shares":
                    master = combined_master(secret)  # the custodians' shares, combined by the barrier
                else:
                    master = stretch(secret, salt=state.kdf_salt, **state.kdf)
            except ValueError:
                raise WrongKey("malformed key") from None
            ring = Keyring(aeads={}, master=LockedSecret(master))
            wipe(master)
            for v in state.versions:
                _add_file_aead(state, ring, v)
        else:
            line = strip_line(secret)
            try:
                pin = line.decode("utf-8")
            except UnicodeDecodeError:
                raise WrongKey("PIN is not UTF-8") from None
            finally:
                wipe(line)
            try:
                token = Token(config.pkcs11_module, state.token_label or config.token_label, pin)
            except WrongPin:
                raise WrongKey("the token refused the PIN") from None
            ring = Keyring(aeads={}, token=token)
            try:
                for v, version in state.versions.items():
                    ring.aeads[v] = token.key(version.token_label or token_key_label(v))
            except TokenError:
                token.close()
                raise
    finally:
        wipe(secret)
    for v, version in state.versions.items():
        if not cipher.check_kcv(ring.aeads[v], v, version.kcv_nonce, version.kcv):
            close_ring(ring)
            raise WrongKey(f"key check value of version {v} does not match")
    ring.counts = {v: version.encryptions_reserved for v, version in state.versions.items()}
    return ring


def _add_file_aead(state: State, ring: Keyring, v: int) -> cipher.Aead:
    if ring.master is None:
        raise ValueError("no master key")
    with ring.master.view() as master:
        key = cipher.derive_version_key(master, salt=state.hkdf_salt, version=v)
    aead = ring.aeads[v] = cipher.FileAead(key)
    wipe(key)
    return aead


def close_ring(ring: Keyring) -> None:
    if ring.master is not None:
        ring.master.close()
    if ring.token is not None:
        ring.token.close()
    ring.aeads.clear()


def create_state(
    config: Config, secret: bytearray, *, key_kind: str, scrypt: dict[str, int] | None = None
) -> tuple[State, Keyring]:
    """`keyd init`: a fresh state with version 1 and its key check value (and the token key)."""
    state = State(
        mode=config.mode,
        key_kind=key_kind,
        kdf=dict(scrypt or {}) if key_kind == "passphrase" else {},
        kdf_salt=os.urandom(16),
        hkdf_salt=os.urandom(32),
        token_label=config.token_label if config.mode == "pkcs11" else None,
        current_version=1,
        min_decrypt_version=1,
        versions={},
    )
    if config.mode == "file":
        try:
            master = (
                raw_key(secret)
                if key_kind == "raw"
                else combined_master(secret)
                if key_kind == "shares"
                else stretch(secret, salt=state.kdf_salt, **state.kdf)
            )
        finally:
            wipe(secret)
        ring = Keyring(aeads={}, master=LockedSecret(master))
        wipe(master)
    else:
        line = strip_line(secret)
        wipe(secret)
        try:
            pin = line.decode("utf-8")
        finally:
            wipe(line)
        ring = Keyring(aeads={}, token=Token(config.pkcs11_module, config.token_label, pin))
    add_version(state, ring, 1)
    return state, ring


def add_version(state: State, ring: Keyring, v: int) -> None:
    label = None
    if ring.master is not None:
        aead: cipher.Aead = _add_file_aead(state, ring, v)
    else:
        if ring.token is None:
            raise TokenError("no master key and no token: cannot add a key version")
        label = token_key_label(v)
        aead = ring.token.generate_key(label)
    nonce, kcv = cipher.make_kcv(aead, v)
    state.versions[v] = Version(number=v, created=time.time(), kcv_nonce=nonce, kcv=kcv, token_label=label)
    ring.aeads[v] = aead
    ring.counts[v] = 0
