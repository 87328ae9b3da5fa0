"""The key ring: the per-version AEADs of an unsealed keyd, and how one is opened, created and closed.

File mode derives every version's key from the operator's master (kept in a locked page for
rotation); PKCS#11 mode holds a logged-in token session and a handle per version. Either way every
version's key check value is verified before the ring is used, so a wrong secret never encrypts.

Every version belongs to a secret generation (keyd/state.py, Generation). Usually there is one; after
`keyd rekey` the old generation stays until `keyd retire-secret`, and the ring is opened one
generation at a time, oldest first (`open_next`), each with its own secret.
"""

from __future__ import annotations

import copy
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field

from keyd import cipher
from keyd.config import Config
from keyd.hardening import LockedSecret
from keyd.keysource import (
    MIN_PASSPHRASE,
    Token,
    TokenError,
    WrongPin,
    raw_key,
    stretch,
    strip_line,
    token_key_label,
    wipe,
)
from keyd.shares import combined_master
from keyd.state import Generation, State, Version

DEFAULT_SCRYPT = {"n": 2**17, "r": 8, "p": 1}


class WrongKey(Exception):
    """The dropped key, passphrase or PIN does not match the state's key check values."""


class RekeyRefused(Exception):
    """A new secret keyd will not re-key to. The message names the rule, never the secret."""


@dataclass
class Opened:
    """One secret generation, opened: the master (file mode) or the token session (PKCS#11 mode)."""

    master: LockedSecret | None = None
    token: Token | None = None

    def close(self) -> None:
        if self.master is not None:
            self.master.close()
        if self.token is not None:
            self.token.close()


@dataclass
class Keyring:
    """An unsealed keyd's key material: one AEAD per key version, and encryptions counted per version."""

    aeads: dict[int, cipher.Aead]
    opened: dict[int, Opened] = field(default_factory=dict)  # per generation, kept for rotation
    counts: dict[int, int] = field(default_factory=dict)


def awaited(state: State, ring: Keyring | None) -> Generation | None:
    """The generation whose secret unseal needs next (oldest first); None when all are open."""
    for gen in state.generations():
        if ring is None or gen.number not in ring.opened:
            return gen
    return None


def _open_secret(gen: Generation, secret: bytearray, config: Config) -> Opened:
    """The operator's secret for `gen` as an Opened (not yet checked). Raises WrongKey. Wipes `secret`."""
    try:
        if gen.mode == "file":
            try:
                if gen.key_kind == "raw":
                    master = raw_key(secret)
                elif gen.key_kind == "shares":
                    master = combined_master(secret)  # the custodians' shares, combined by the barrier
                else:
                    master = stretch(secret, salt=gen.kdf_salt, **gen.kdf)
            except ValueError:
                raise WrongKey("malformed key") from None
            opened = Opened(master=LockedSecret(master))
            wipe(master)
            return opened
        line = strip_line(secret)
        try:
            pin = line.decode("utf-8")
        except UnicodeDecodeError:
            raise WrongKey("PIN is not UTF-8") from None
        finally:
            wipe(line)
        try:
            return Opened(token=Token(config.pkcs11_module, gen.token_label or config.token_label, pin))
        except WrongPin:
            raise WrongKey("the token refused the PIN") from None
    finally:
        wipe(secret)


def _version_aead(gen: Generation, opened: Opened, version: Version) -> cipher.Aead:
    if opened.master is not None:
        with opened.master.view() as master:
            key = cipher.derive_version_key(master, salt=gen.hkdf_salt, version=version.number)
        aead = cipher.FileAead(key)
        wipe(key)
        return aead
    if opened.token is None:
        raise TokenError("no master key and no token")
    return opened.token.key(version.token_label or token_key_label(version.number))


def open_next(state: State, ring: Keyring | None, secret: bytearray, config: Config) -> Keyring:
    """Open the awaited generation with `secret` and check its versions' key check values.

    Returns the ring with that generation added (a new ring when `ring` is None); the ring is whole
    when `awaited` says None. Raises WrongKey or TokenError, and then `ring` is as it was. Wipes `secret`.
    """
    gen = awaited(state, ring)
    if gen is None:
        wipe(secret)
        raise WrongKey("every secret generation is already open")
    opened = _open_secret(gen, secret, config)
    aeads: dict[int, cipher.Aead] = {}
    try:
        for v, version in state.versions.items():
            if version.generation == gen.number:
                aeads[v] = _version_aead(gen, opened, version)
    except TokenError:
        opened.close()
        raise
    for v, aead in aeads.items():
        version = state.versions[v]
        if not cipher.check_kcv(aead, v, version.kcv_nonce, version.kcv):
            opened.close()
            raise WrongKey(f"key check value of version {v} (generation {gen.number}) does not match")
    if ring is None:
        ring = Keyring(aeads={})
    ring.opened[gen.number] = opened
    ring.aeads.update(aeads)
    ring.counts.update({v: state.versions[v].encryptions_reserved for v in aeads})
    return ring


def open_keyring(state: State, secret: bytearray, config: Config) -> Keyring:
    """A whole ring from one secret: for a state with one generation. Raises WrongKey. Wipes `secret`."""
    ring = open_next(state, None, secret, config)
    if awaited(state, ring) is not None:
        close_ring(ring)
        raise WrongKey("this state needs more than one secret: unseal asks for each")
    return ring


def close_ring(ring: Keyring) -> None:
    for opened in ring.opened.values():
        opened.close()
    ring.opened.clear()
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
    try:
        opened = _open_secret(state.current(), secret, config)
    except WrongKey as exc:
        raise ValueError(str(exc)) from None
    ring = Keyring(aeads={}, opened={state.generation: opened})
    add_version(state, ring, 1)
    return state, ring


def _new_version(
    gen: Generation, opened: Opened, v: int, *, label: str | None
) -> tuple[Version, cipher.Aead]:
    if opened.master is not None:
        version = Version(number=v, created=time.time(), kcv_nonce=b"", kcv=b"", generation=gen.number)
        aead = _version_aead(gen, opened, version)
    else:
        if opened.token is None:
            raise TokenError("no master key and no token: cannot add a key version")
        label = label or token_key_label(v)
        aead = opened.token.generate_key(label)
        version = Version(
            number=v, created=time.time(), kcv_nonce=b"", kcv=b"", token_label=label, generation=gen.number
        )
    version.kcv_nonce, version.kcv = cipher.make_kcv(aead, v)
    return version, aead


def add_version(state: State, ring: Keyring, v: int) -> None:
    """Rotation: version `v` under the current generation's secret."""
    version, aead = _new_version(state.current(), ring.opened[state.generation], v, label=None)
    state.versions[v] = version
    ring.aeads[v] = aead
    ring.counts[v] = 0


# --- re-keying ------------------------------------------------------------------------------------

REKEY_KINDS = ("passphrase", "raw", "pin")


@dataclass(frozen=True)
class RekeySpec:
    """What the new secret is: its kind, scrypt cost (passphrase) and token label (pin)."""

    kind: str
    scrypt_n: int = DEFAULT_SCRYPT["n"]
    token_label: str = ""


@dataclass
class Rekeyed:
    """A re-key made but not yet adopted: the new state to save, then `adopt` into the ring."""

    state: State
    opened: Opened
    version: int
    aead: cipher.Aead

    def discard(self) -> None:
        self.opened.close()


def _same_file_secret(old: Generation, opened_old: Opened, new_secret: bytearray) -> bool:
    """Whether the new file-mode secret is the old one (re-keying to it would change nothing)."""
    if old.mode != "file" or opened_old.master is None or old.key_kind not in ("raw", "passphrase"):
        return False  # a split (shares) master is random: no typed secret is it
    typed = bytearray(new_secret)
    try:
        again = raw_key(typed) if old.key_kind == "raw" else stretch(typed, salt=old.kdf_salt, **old.kdf)
    except ValueError:
        return False
    finally:
        wipe(typed)
    try:
        with opened_old.master.view() as master:
            return hmac.compare_digest(bytes(master), bytes(again))
    finally:
        wipe(again)


def prepare_rekey(state: State, ring: Keyring, spec: RekeySpec, secret: bytearray, config: Config) -> Rekeyed:
    """A new secret generation with a new key version under it, made from `secret`. Wipes `secret`.

    Nothing changes here: the caller saves `Rekeyed.state` (atomically) and only then calls `adopt`;
    if the save fails it calls `discard`. Raises RekeyRefused (nothing made) or TokenError.
    """
    try:
        if state.retained:
            raise RekeyRefused("an older secret is still retained: finish that re-key (retire-secret) first")
        if state.key_kind == "shares":
            raise RekeyRefused("a key split into custodian shares cannot be re-keyed by this command")
        if spec.kind not in REKEY_KINDS:
            raise RekeyRefused("unknown kind of secret")
        line = strip_line(secret)
        length = len(line)
        wipe(line)
        if spec.kind == "passphrase" and length < MIN_PASSPHRASE:
            raise RekeyRefused(f"a passphrase must be at least {MIN_PASSPHRASE} characters")
        if spec.kind == "passphrase" and (spec.scrypt_n < 2**14 or spec.scrypt_n & (spec.scrypt_n - 1)):
            raise RekeyRefused("scrypt N must be a power of two >= 16384")
        if spec.kind == "pin" and not spec.token_label:
            raise RekeyRefused("a token re-key needs the new token's label")
        old = state.current()
        if spec.kind == "pin" and old.mode == "pkcs11" and spec.token_label == old.token_label:
            raise RekeyRefused("the new token is the current one: that is a rotation, not a re-key")
        if spec.kind != "pin" and _same_file_secret(old, ring.opened[old.number], secret):
            raise RekeyRefused("the new secret is the current one")
        new = copy.deepcopy(state)
        new.retained[old.number] = old
        new.generation = old.number + 1
        new.mode = "pkcs11" if spec.kind == "pin" else "file"
        new.key_kind = spec.kind
        new.kdf = {**DEFAULT_SCRYPT, "n": spec.scrypt_n} if spec.kind == "passphrase" else {}
        new.kdf_salt = os.urandom(16)
        new.hkdf_salt = os.urandom(32)
        new.token_label = spec.token_label if spec.kind == "pin" else None
        try:
            opened = _open_secret(new.current(), bytearray(secret), config)
        except WrongKey as exc:
            raise RekeyRefused(str(exc)) from None
    finally:
        wipe(secret)
    v = state.current_version + 1
    try:
        # A random suffix: a key left in the token by a re-key that crashed before its state was
        # saved must not block the next attempt (delete such orphans with the token's own tools).
        label = f"{token_key_label(v)}-g{new.generation}-{secrets.token_hex(4)}"
        version, aead = _new_version(new.current(), opened, v, label=label)
    except BaseException:
        opened.close()
        raise
    new.versions[v] = version
    new.current_version = v
    return Rekeyed(state=new, opened=opened, version=v, aead=aead)


def adopt(ring: Keyring, rekeyed: Rekeyed) -> None:
    """After the new state is saved: the new generation and version join the ring."""
    ring.opened[rekeyed.state.generation] = rekeyed.opened
    ring.aeads[rekeyed.version] = rekeyed.aead
    ring.counts[rekeyed.version] = 0


def retirable(state: State) -> list[int]:
    """The retained generations none of whose versions may still be decrypted."""
    return [
        g
        for g in sorted(state.retained)
        if all(v.number < state.min_decrypt_version for v in state.versions.values() if v.generation == g)
    ]


def without_generations(state: State, gone: list[int]) -> State:
    """The state with the generations `gone` and their key versions forgotten."""
    new = copy.deepcopy(state)
    for g in gone:
        del new.retained[g]
    new.versions = {n: v for n, v in new.versions.items() if v.generation not in gone}
    return new


def forget_generations(ring: Keyring, state: State, gone: list[int]) -> None:
    """After the state without them is saved: wipe the old secrets and drop their versions' keys."""
    for g in gone:
        opened = ring.opened.pop(g, None)
        if opened is not None:
            opened.close()
    for v in [v for v in ring.aeads if v not in state.versions]:
        del ring.aeads[v]
        ring.counts.pop(v, None)
