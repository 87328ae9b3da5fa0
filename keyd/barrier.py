"""The barrier (HashiCorp Vault's word for it): keyd's sealed/unsealed state and the operations it serves.

Sealed, nothing passes. Unsealed, it holds the key ring (keyd/keyring.py) and answers each request
after its checks: the peer's uid, the decrypt budgets, and every stored value's format and key
version (keyd/envelope.py) before it is opened. Transport-free: `handle(body, uid)` takes one
request body and returns one response frame, so the socket server stays dumb and the tests can
drive the logic directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from keyd import cipher, envelope
from keyd.budgets import Budgets, BudgetWriteFailed
from keyd.config import Config
from keyd.errors import ErrorCode
from keyd.events import Event, EventSink
from keyd.keyring import (
    Keyring,
    RekeyRefused,
    RekeySpec,
    WrongKey,
    add_version,
    adopt,
    awaited,
    close_ring,
    forget_generations,
    open_next,
    prepare_rekey,
    retirable,
    without_generations,
)
from keyd.keysource import TokenError
from keyd.protocol import ADMIN_OPS, CRYPTO_OPS, Op, ProtocolError, Reason
from keyd.protocol.request import Item, Request, parse_request
from keyd.protocol.response import Outcome, encode_error, encode_items, encode_json, encode_one
from keyd.shares import ShareCollector
from keyd.state import StateStore

# How long a `keyd rekey` request waits for its secret at the drop path before it is forgotten.
REKEY_WINDOW = 120.0

log = logging.getLogger("keyd")

# Encryptions are counted in memory and reserved on disk in chunks (an upper bound survives a crash).
ENCRYPTION_CHUNK = 1 << 16

BAD_REQUEST = ErrorCode.BAD_REQUEST
INTEGRITY = ErrorCode.INTEGRITY_FAILURE
FORBIDDEN = ErrorCode.FORBIDDEN
QUOTA = ErrorCode.QUOTA_EXCEEDED
INTERNAL = ErrorCode.INTERNAL

_BUDGET_REASONS = {
    ("employee", "minute"): Reason.EMPLOYEE_MINUTE,
    ("employee", "hour"): Reason.EMPLOYEE_HOUR,
    ("employee", "day"): Reason.EMPLOYEE_DAY,
    ("global", "minute"): Reason.GLOBAL_MINUTE,
    ("global", "hour"): Reason.GLOBAL_HOUR,
    ("global", "day"): Reason.GLOBAL_DAY,
}


# A ciphertext ready to open: (aead, nonce, ciphertext+tag, associated data).
_Opened = tuple[cipher.Aead, bytes, bytes, bytes]


class Barrier:
    """keyd's one state machine: `unseal`/`seal`, and `handle` for every request a peer sends."""

    def __init__(self, *, config: Config, store: StateStore, events: EventSink, budgets: Budgets) -> None:
        self.config = config
        self.store = store
        self.events = events
        self.budgets = budgets
        self.state = store.load()
        if config.mode not in {g.mode for g in self.state.generations()}:
            # During a re-key from file to PKCS#11 mode either configured mode is right.
            raise ValueError(f"state is in {self.state.mode} mode but keyd is configured for {config.mode}")
        self._ring: Keyring | None = None
        self._partial: Keyring | None = None  # sealed: the generations opened so far (oldest first)
        self._rekey: tuple[RekeySpec, str, float] | None = None  # armed: spec, actor, deadline
        # key_kind "shares": the custodians' shares delivered so far (locked pages), until M are in
        self._shares = (
            ShareCollector(self.state.shares, timeout=config.share_timeout, events=events)
            if self.state.shares is not None
            else None
        )
        self._lock = threading.Lock()  # state changes, rotation, encryption reservations
        self._allowed = config.allowed_uids
        self._admins = config.admin_uids
        self._crypto: dict[Op, Callable[[Keyring, Request], bytes]] = {
            Op.ENCRYPT: self._encrypt_one,
            Op.DECRYPT: self._decrypt_one,
            Op.REWRAP: lambda ring, req: encode_items(self._rewrap(ring, req)),
            Op.ENCRYPT_BATCH: lambda ring, req: encode_items(self._encrypt(ring, req)),
            Op.DECRYPT_BATCH: lambda ring, req: encode_items(self._decrypt(ring, req)),
            Op.REWRAP_BATCH: lambda ring, req: encode_items(self._rewrap(ring, req)),
        }
        if set(self._crypto) != CRYPTO_OPS:
            raise AssertionError("every crypto op needs a handler")

    # --- sealing ------------------------------------------------------------------------------

    @property
    def sealed(self) -> bool:
        return self._ring is None

    def unseal(self, secret: bytearray) -> bool:
        """Try the operator's secret. True if keyd is now unsealed; on a wrong key it stays sealed."""
        # Between a re-key and the old secret's retirement the state has two secret generations: the
        # secret is tried for the oldest one not yet opened, and keyd unseals when all are open.
        with self._lock:
            gen = awaited(self.state, self._partial) or self.state.current()
            try:
                ring = open_next(self.state, self._partial, secret, self.config)
            except WrongKey as exc:
                log.warning("unseal refused: %s; keyd stays sealed", exc)
                self.events.emit(Event.WRONG_KEY, mode=gen.mode, reason=str(exc), generation=gen.number)
                return False
            except TokenError as exc:
                log.error("unseal failed: %s; keyd stays sealed", exc)
                self.events.emit(Event.WRONG_KEY, mode=gen.mode, reason=str(exc), generation=gen.number)
                return False
            nxt = awaited(self.state, ring)
            if nxt is not None:
                self._partial = ring
                log.info(
                    "secret of generation %d accepted; waiting for generation %d's", gen.number, nxt.number
                )
                return False
            self._partial = None
            old, self._ring = self._ring, ring
            if old is not None:
                close_ring(old)
        log.info("unsealed (key version %d)", self.state.current_version)
        self.events.emit(Event.UNSEALED, mode=self.state.mode, key_version=self.state.current_version)
        return True

    @property
    def takes_shares(self) -> bool:
        """Sealed with custodian shares: a drop file holds one share, not the whole secret."""
        return self._shares is not None and self._ring is None

    def deliver_share(self, content: bytearray, *, uid: int | None) -> bool:
        """One custodian's share (keyd/shares.py). True once it completed M and keyd is unsealed."""
        if self._shares is None:
            raise ValueError("this key is not split into shares")
        with self._lock:
            master = self._shares.offer(content, uid=uid)
        return master is not None and self.unseal(master)

    def expire_shares(self) -> None:
        if self._shares is not None:
            with self._lock:
                self._shares.expire()

    def seal(self, why: str) -> None:
        with self._lock:
            if self._shares is not None:
                self._shares.clear()  # shares waiting for the others are key material too
            ring, self._ring = self._ring, None
            partial, self._partial = self._partial, None
            self._rekey = None
            if partial is not None:
                close_ring(partial)  # the older generations opened so far
            if ring is None:
                return
            close_ring(ring)
        log.info("sealed (%s)", why)
        self.events.emit(Event.SEALED, why=why)

    # --- requests -----------------------------------------------------------------------------

    def handle(self, body: bytes, uid: int) -> bytes:
        """One request body in, one response frame out. Never raises for anything a peer can send."""
        try:
            req = parse_request(body)
        except ProtocolError as exc:
            return encode_error(BAD_REQUEST, exc.refusal)
        op = req.op
        try:
            crypto = self._crypto.get(op)
            if crypto is not None:
                if uid not in self._allowed:
                    return encode_error(FORBIDDEN, Reason.PEER_NOT_ALLOWED)
                ring = self._ring
                if ring is None:
                    return encode_error(ErrorCode.SEALED, Reason.SEALED)
                return crypto(ring, req)
            if op is Op.STATUS:
                return encode_json(self.status())
            if op in ADMIN_OPS:
                if uid not in self._admins:
                    self.events.emit(Event.ADMIN_REFUSED, uid=uid, op=op.name.lower(), actor=req.actor)
                    return encode_error(FORBIDDEN, Reason.NOT_ADMIN)
                return self._admin(req)
        except Exception:
            log.exception("request %s failed", op.name)
            return encode_error(INTERNAL, Reason.INTERNAL)
        return encode_error(BAD_REQUEST, Reason.UNKNOWN_OP)  # pragma: no cover - every Op is handled

    def _reserve_encryptions(self, ring: Keyring, v: int, n: int) -> Reason | None:
        with self._lock:
            count = ring.counts[v] + n
            if count > cipher.MAX_ENCRYPTIONS_PER_VERSION:
                self.events.emit(Event.KEY_VERSION_EXHAUSTED, key_version=v)
                return Reason.KEY_EXHAUSTED
            version = self.state.versions[v]
            if count > version.encryptions_reserved:
                version.encryptions_reserved = count + ENCRYPTION_CHUNK
                try:
                    self.store.save(self.state)
                except OSError:
                    log.exception("cannot write the state file")
                    self.events.emit(Event.STATE_WRITE_FAILED, file="state.json")
                    return Reason.STATE_WRITE_FAILED
            ring.counts[v] = count
        return None

    # Single-item fast paths: the same checks as the batch paths, without their lists.
    def _encrypt_one(self, ring: Keyring, req: Request) -> bytes:
        record_id, field, data, err = req.items[0]
        if err is not None:
            return encode_items([(BAD_REQUEST, err)])
        v = self.state.current_version
        refusal = self._reserve_encryptions(ring, v, 1)
        if refusal is not None:
            return encode_items([(INTERNAL if refusal is Reason.STATE_WRITE_FAILED else FORBIDDEN, refusal)])
        return encode_one(cipher.encrypt(ring.aeads[v], v, data, record_id, field))

    def _decrypt_one(self, ring: Keyring, req: Request) -> bytes:
        checked = self._check(ring, req, req.items[0])
        if len(checked) != 4:
            self._integrity_event(req, [checked])
            return encode_items([checked])
        granted, refusal = self._charge(req, 1)
        if not granted:
            return encode_items([refusal or (INTERNAL, Reason.INTERNAL)])
        aead, nonce, body, aad = checked
        try:
            return encode_one(aead.open(nonce, body, aad))
        except cipher.AuthenticationFailed:
            out = (INTEGRITY, Reason.AUTHENTICATION_FAILED)
            self._integrity_event(req, [out])
            return encode_items([out])

    def _integrity_event(self, req: Request, outcomes: Sequence[object]) -> None:
        """One integrity_failure event per request for every stored value it could not open.

        One per request, not per item: a flood of forged items must not flood the spool. The reasons
        say which kinds of damage were seen (a relabelled key version, a malformed value, a tag).
        """
        failures = [o[1] for o in outcomes if isinstance(o, tuple) and o[0] is INTEGRITY]
        if failures:
            reasons = sorted({str(r) for r in failures})
            failed = len(failures)
            self.events.emit(
                Event.INTEGRITY_FAILURE,
                op=req.op.name.lower(),
                items=failed,
                reasons=",".join(reasons),
                actor=req.actor,
                purpose=req.purpose,
            )

    def _encrypt(self, ring: Keyring, req: Request) -> list[Outcome]:
        items = req.items
        # One read of the version: the count reserved and the key used must be the same version's.
        v = self.state.current_version
        good = [item for item in items if item[3] is None] if req.failed else items
        refusal = self._reserve_encryptions(ring, v, len(good)) if good else None
        if refusal is None:
            if len(good) == len(items):
                return cipher.encrypt_many(ring.aeads[v], v, good)  # type: ignore[return-value] # all bytes
            sealed = iter(cipher.encrypt_many(ring.aeads[v], v, good))
        out: list[Outcome] = []
        for _, _, _, err in items:
            if err is not None:
                out.append((BAD_REQUEST, err))
            elif refusal is not None:
                out.append((INTERNAL if refusal is Reason.STATE_WRITE_FAILED else FORBIDDEN, refusal))
            else:
                out.append(next(sealed))
        return out

    def _check(self, ring: Keyring, req: Request, item: Item) -> _Opened | tuple[ErrorCode, Reason]:
        """Everything about one ciphertext that can be refused before it is opened."""
        record_id, field, data, err = item
        # Every refusal of the stored value itself is one code, integrity_failure: to the caller a
        # value that is malformed, oversized, relabelled, retired or forged is the same thing, a
        # stored value that cannot be opened (the reason says which). Only the request's own parts
        # (record id, field name) are a bad_request.
        if err is Reason.TOO_LARGE:
            return (INTEGRITY, Reason.TOO_LARGE)  # longer than any ciphertext keyd ever made
        if err is not None:
            return (BAD_REQUEST, err)
        try:
            v, head, nonce, body = envelope.split(data)
        except envelope.MalformedCiphertext:
            return (INTEGRITY, Reason.BAD_CIPHERTEXT)
        aead = ring.aeads.get(v)
        # Retired first: a version whose secret was retired has no key left, and is still "retired".
        if v < self.state.min_decrypt_version:
            self.events.emit(Event.RETIRED_VERSION_USED, key_version=v, actor=req.actor, purpose=req.purpose)
            return (INTEGRITY, Reason.RETIRED_VERSION)
        if aead is None:
            return (INTEGRITY, Reason.UNKNOWN_KEY_VERSION)
        return (aead, nonce, body, cipher.associated_data(head, record_id, field))

    def _charge(self, req: Request, n: int) -> tuple[int, tuple[ErrorCode, Reason] | None]:
        """Charge up to `n` decrypts to the budgets: (granted, the refusal for the rest)."""
        try:
            granted, exceeded = self.budgets.charge(req.actor, n)
        except BudgetWriteFailed:
            log.exception("cannot write budgets.json: refusing decrypts")
            self.events.emit(Event.STATE_WRITE_FAILED, file="budgets.json")
            return 0, (INTERNAL, Reason.STATE_WRITE_FAILED)
        if exceeded is None:
            return granted, None
        if exceeded.first:
            self.events.emit(
                Event.BUDGET_EXCEEDED,
                scope=exceeded.scope,
                window=exceeded.window,
                limit=exceeded.limit,
                actor=req.actor,
                purpose=req.purpose,
            )
        return granted, (QUOTA, _BUDGET_REASONS[(exceeded.scope, exceeded.window)])

    def _open_all(self, ring: Keyring, req: Request, *, charge: bool) -> list[Outcome]:
        checked = [self._check(ring, req, item) for item in req.items]
        # Every well-formed ciphertext is charged before it is opened, forged or not: probing costs budget.
        candidates = sum(1 for c in checked if len(c) == 4)
        granted, refusal = self._charge(req, candidates) if charge and candidates else (candidates, None)
        out: list[Outcome] = []
        for c in checked:
            if len(c) != 4:
                out.append(c)
                continue
            if granted <= 0:
                out.append(refusal or (INTERNAL, Reason.INTERNAL))
                continue
            granted -= 1
            aead, nonce, body, aad = c
            try:
                out.append(aead.open(nonce, body, aad))
            except cipher.AuthenticationFailed:
                out.append((INTEGRITY, Reason.AUTHENTICATION_FAILED))
        self._integrity_event(req, out)
        return out

    def _decrypt(self, ring: Keyring, req: Request) -> list[Outcome]:
        return self._open_all(ring, req, charge=True)

    def _rewrap(self, ring: Keyring, req: Request) -> list[Outcome]:
        # Rewrap never returns plaintext, so it is not charged to the decrypt budgets.
        opened = self._open_all(ring, req, charge=False)
        good = [
            (item[0], item[1], plain, None)
            for item, plain in zip(req.items, opened, strict=True)
            if isinstance(plain, bytes)
        ]
        v = self.state.current_version  # read once, as in _encrypt
        refusal = self._reserve_encryptions(ring, v, len(good)) if good else None
        if refusal is None:
            sealed = iter(cipher.encrypt_many(ring.aeads[v], v, good))
        out: list[Outcome] = []
        for result in opened:
            if not isinstance(result, bytes):
                out.append(result)
            elif refusal is not None:
                out.append((INTERNAL if refusal is Reason.STATE_WRITE_FAILED else FORBIDDEN, refusal))
            else:
                out.append(next(sealed))
        return out

    # --- status and operator commands ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:  # rotation adds versions: never iterate them while it does
            return self._status()

    def _status(self) -> dict[str, Any]:
        ring = self._ring
        state = self.state
        counts = (
            ring.counts
            if ring is not None
            else {v: x.encryptions_reserved for v, x in state.versions.items()}
        )
        return {
            "sealed": ring is None,
            "mode": state.mode,
            "key_version": state.current_version,
            "min_decrypt_version": state.min_decrypt_version,
            "versions": {str(v): counts.get(v, 0) for v in sorted(state.versions)},
            "counts_exact": ring is not None,
            **self._generations_status(),
            **({"shares": self._shares.progress()} if self._shares is not None else {}),
        }

    def _generations_status(self) -> dict[str, Any]:
        """The secret generations (oldest first), which one unseal waits for, and a pending re-key."""
        state = self.state
        waiting = awaited(state, self._partial) if self._ring is None else None
        return {
            "generation": state.generation,
            "generations": [
                {
                    "number": g.number,
                    "mode": g.mode,
                    "key_kind": g.key_kind,
                    "versions": sorted(v.number for v in state.versions.values() if v.generation == g.number),
                }
                for g in state.generations()
            ],
            "awaiting_generation": waiting.number if waiting is not None else None,
            "rekey_armed": self.rekey_armed,
        }

    def _admin(self, req: Request) -> bytes:
        if req.op is Op.SEAL:
            self.seal(f"seal command from {req.actor}")
            return encode_json(self.status())
        ring = self._ring
        if ring is None:
            return encode_error(ErrorCode.SEALED, Reason.SEALED)
        if req.op in (Op.REKEY, Op.RETIRE_SECRET):
            return self._rekey_admin(ring, req)
        with self._lock:
            if req.op is Op.ROTATE:
                v = self.state.current_version + 1
                add_version(self.state, ring, v)
                self.state.current_version = v
                self.store.save(self.state)
                event: tuple[Event, int] = (Event.ROTATED, v)
            else:
                if (
                    req.arg is None
                    or req.arg > self.state.current_version
                    or req.arg < min(self.state.versions)  # a retired secret's versions are gone for good
                ):
                    return encode_error(BAD_REQUEST, Reason.BAD_VERSION)
                self.state.min_decrypt_version = req.arg
                self.store.save(self.state)
                event = (Event.RETIRED, req.arg)
        self.events.emit(event[0], key_version=event[1], actor=req.actor)
        log.info("%s: key version %d", event[0].value, event[1])
        return encode_json(self.status())

    # --- re-keying: a new operator secret (keyd/keyring.py) ---------------------------------------

    @property
    def rekey_armed(self) -> bool:
        armed = self._rekey
        return armed is not None and time.monotonic() < armed[2]

    def _rekey_admin(self, ring: Keyring, req: Request) -> bytes:
        with self._lock:
            if req.op is Op.REKEY:
                if req.rekey is None:  # pragma: no cover - the parser guarantees it
                    return encode_error(BAD_REQUEST, Reason.BAD_REKEY)
                if self.state.retained:
                    return encode_error(BAD_REQUEST, Reason.OLD_SECRET_RETAINED)
                args = req.rekey
                spec = RekeySpec(
                    kind=args.kind,
                    scrypt_n=1 << args.scrypt_log_n if args.kind == "passphrase" else 0,
                    token_label=args.token_label,
                )
                self._rekey = (spec, req.actor, time.monotonic() + REKEY_WINDOW)
                log.info("re-key armed by %s: waiting for the new %s at the drop path", req.actor, spec.kind)
                return encode_json(self._status())
            if not self.state.retained:
                return encode_error(BAD_REQUEST, Reason.NO_OLD_SECRET)
            gone = retirable(self.state)
            if not gone:
                return encode_error(BAD_REQUEST, Reason.OLD_VERSIONS_LIVE)
            new = without_generations(self.state, gone)
            try:
                self.store.save(new)
            except OSError:
                log.exception("cannot write the state file")
                self.events.emit(Event.STATE_WRITE_FAILED, file="state.json")
                return encode_error(INTERNAL, Reason.STATE_WRITE_FAILED)
            self.state = new
            forget_generations(ring, new, gone)  # the old master is overwritten, the token closed
        for g in gone:
            self.events.emit(Event.SECRET_RETIRED, generation=g, actor=req.actor)
            log.info("secret generation %d retired by %s", g, req.actor)
        return encode_json(self.status())

    def rekey(self, secret: bytearray, *, uid: int) -> bool:
        """The armed re-key, with the new secret the drop owner `uid` delivered. Wipes `secret`.

        Fails closed: any refusal leaves the state and the ring as they were. The new state (with the
        old generation retained) is saved atomically before the ring uses it, so a crash on either
        side of the save leaves a state that unseals with the secrets the operator has.
        """
        with self._lock:
            armed, self._rekey = self._rekey, None
            ring = self._ring
            if armed is None or ring is None or time.monotonic() >= armed[2]:
                secret[:] = bytes(len(secret))
                self.events.emit(Event.REKEY_REFUSED, reason="not_armed", uid=uid)
                return False
            spec, actor, _ = armed
            try:
                made = prepare_rekey(self.state, ring, spec, secret, self.config)
            except (RekeyRefused, TokenError) as exc:
                log.warning("re-key refused: %s; nothing changed", exc)
                self.events.emit(Event.REKEY_REFUSED, reason=str(exc), uid=uid, actor=actor)
                return False
            try:
                self.store.save(made.state)
            except OSError:
                made.discard()
                log.exception("cannot write the state file: re-key abandoned, nothing changed")
                self.events.emit(Event.STATE_WRITE_FAILED, file="state.json")
                self.events.emit(Event.REKEY_REFUSED, reason="state_write_failed", uid=uid, actor=actor)
                return False
            self.state = made.state
            adopt(ring, made)
            generation, mode = made.state.generation, made.state.mode
        log.info("re-keyed to secret generation %d (%s), key version %d", generation, mode, made.version)
        self.events.emit(
            Event.REKEYED,
            generation=generation,
            mode=mode,
            key_kind=spec.kind,
            key_version=made.version,
            uid=uid,
            actor=actor,
        )
        return True
