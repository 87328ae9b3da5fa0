"""M-of-N custodian shares of the master key: Shamir's secret sharing over GF(256), and their text form.

Split knowledge and dual control (PCI DSS 3.6.1.2, 3.7.6): `keyd init --key-kind shares` makes a
random 32-byte master, splits it into N shares of which any M rebuild it, prints each share once for
its custodian and keeps only a salted hash of each (a share is 256 random bits: a fast hash is
safe). At boot keyd holds the shares it is given in locked pages until M are in, combines them,
checks the result against the key check values, and wipes them.

Shamir: byte k of the master is the constant term of a random polynomial of degree M-1 over GF(256);
share i is that polynomial at x = i for every byte. M points fix the polynomial (Lagrange
interpolation at 0); M-1 points leave every value of the constant term equally likely.

Arithmetic is by log/exp tables with masks instead of branches on secret bytes (Python cannot
promise constant time; this keeps the obvious data-dependent branches out).

A share's text (what a custodian types)::

    SR1-2-ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567-ABCD-EFGH-IJKL-MNOP-QRSA-K7QD

`SR1` (format 1), the share's index (decimal, 1-255), 52 base32 digits of the 32-byte value (RFC
4648 alphabet, the last 4 bits zero), then a 4-digit check value: 20 bits of SHA-256 over the index
and value, so a mistyped digit is caught before anything reaches keyd. Case and the placement of
dashes or spaces after the index do not matter.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from keyd.events import Event, EventSink, Value
from keyd.hardening import LockedSecret
from keyd.keysource import wipe

SECRET_LEN = 32
MAX_SHARES = 16
MAX_INDEX = 255
PREFIX = b"SR1"
_DIGITS = 52  # base32 digits of a 32-byte value
_CHECK = 4  # base32 digits of the check value
_GROUP = 4
# The longest text a share can have with generous separators; anything longer is refused unread.
MAX_TEXT = 256
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_VALUES = {c: i for i, c in enumerate(_ALPHABET)} | {c + 32: i for i, c in enumerate(_ALPHABET[:26])}
_CHECK_TAG = b"strongroom-share-check-v1"
_VERIFIER_TAG = b"strongroom-share-verifier-v1"


# --- GF(256): the AES field, x^8 + x^4 + x^3 + x + 1, generator 3 --------------------------------


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 510
    log = [0] * 256  # log[0] is never used unmasked
    x = 1
    for i in range(255):
        exp[i] = exp[i + 255] = x
        log[x] = i
        doubled = (x << 1) ^ (0x11B if x & 0x80 else 0)  # x is public here: table building
        x = doubled ^ x
    return exp, log


_EXP, _LOG = _tables()


def _nonzero(a: int) -> int:
    """All ones when 0 < a < 256, else 0: a mask, not a branch."""
    return ~((a - 1) >> 8) & 0xFF


def mul(a: int, b: int) -> int:
    return _EXP[_LOG[a] + _LOG[b]] & _nonzero(a) & _nonzero(b)


def div(a: int, b: int) -> int:
    """a / b; b is a public, non-zero difference of share indices."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    return _EXP[_LOG[a] + 255 - _LOG[b]] & _nonzero(a)


# --- split and combine ---------------------------------------------------------------------------


def check_parameters(count: int, threshold: int) -> None:
    """Refuse what would not be split knowledge: one share alone, more than 16, M above N."""
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise ValueError(f"shares need 2 <= threshold <= count <= {MAX_SHARES}")


def split(
    secret: bytes | bytearray | memoryview, *, count: int, threshold: int
) -> list[tuple[int, bytearray]]:
    """The shares (index, value) for indices 1..count; any `threshold` of them rebuild `secret`."""
    check_parameters(count, threshold)
    if len(secret) != SECRET_LEN:
        raise ValueError(f"the secret is {SECRET_LEN} bytes")
    coefficients = bytearray(os.urandom(SECRET_LEN * (threshold - 1)))
    shares = [(x, bytearray(SECRET_LEN)) for x in range(1, count + 1)]
    try:
        for k in range(SECRET_LEN):
            for x, value in shares:
                y = 0
                for j in range(threshold - 2, -1, -1):  # Horner: highest coefficient first
                    y = mul(y, x) ^ coefficients[j * SECRET_LEN + k]
                value[k] = mul(y, x) ^ secret[k]
    finally:
        coefficients[:] = bytes(len(coefficients))
    return shares


def combine(shares: Sequence[tuple[int, bytes | bytearray | memoryview]]) -> bytearray:
    """The polynomial's value at 0 from these points. With fewer than the threshold it is garbage."""
    xs = [x for x, _ in shares]
    if len(xs) < 2 or len(set(xs)) != len(xs) or not all(1 <= x <= MAX_INDEX for x in xs):
        raise ValueError("combine needs at least two shares with distinct indices 1-255")
    if any(len(v) != SECRET_LEN for _, v in shares):
        raise ValueError(f"a share value is {SECRET_LEN} bytes")
    # Lagrange basis at 0: depends on the public indices only.
    basis = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = mul(num, xm)
                den = mul(den, xm ^ xj)
        basis.append(div(num, den))
    out = bytearray(SECRET_LEN)
    for k in range(SECRET_LEN):
        acc = 0
        for (_, value), lj in zip(shares, basis, strict=True):
            acc ^= mul(value[k], lj)
        out[k] = acc
    return out


# --- the text form -------------------------------------------------------------------------------


class ShareRefusal(StrEnum):
    MALFORMED = "malformed"  # not the share format (length, alphabet, prefix, non-ASCII)
    BAD_INDEX = "bad_index"  # index outside 1-255
    BAD_CHECKSUM = "bad_checksum"  # a mistyped digit
    WRONG_SHARE = "wrong_share"  # well-formed, but not one of this key's shares
    DUPLICATE = "duplicate"  # this index is already held


class ShareRefused(Exception):
    """A share keyd or the CLI will not take. Carries the index when it could be read, never the value."""

    def __init__(self, reason: ShareRefusal, *, index: int | None = None) -> None:
        super().__init__(reason.value if index is None else f"{reason.value} (share {index})")
        self.reason = reason
        self.index = index


def _check_value(index: int, value: bytes | bytearray | memoryview) -> bytes:
    digest = hashlib.sha256(_CHECK_TAG + bytes((index,)) + bytes(value)).digest()
    bits = int.from_bytes(digest[:3], "big") >> 4  # 20 bits
    return bytes(_ALPHABET[(bits >> (5 * (_CHECK - 1 - i))) & 31] for i in range(_CHECK))


def check_value(index: int, value: bytes | bytearray | memoryview) -> str:
    """The 4-digit check value printed at the end of the share: what a custodian types to acknowledge."""
    return _check_value(index, value).decode("ascii")


def format_share(index: int, value: bytes | bytearray | memoryview) -> str:
    """The text a custodian is shown once (a str: it is printed, and Python's str cannot be wiped)."""
    if not 1 <= index <= MAX_INDEX or len(value) != SECRET_LEN:
        raise ValueError("a share has an index 1-255 and a 32-byte value")
    acc, bits, digits = 0, 0, bytearray()
    for byte in value:
        acc = (acc << 8 | byte) & 0xFFF
        bits += 8
        while bits >= 5:
            bits -= 5
            digits.append(_ALPHABET[(acc >> bits) & 31])
    digits.append(_ALPHABET[(acc << (5 - bits)) & 31])  # the last 4 bits, zero-padded
    digits += _check_value(index, value)
    groups = [digits[i : i + _GROUP].decode("ascii") for i in range(0, len(digits), _GROUP)]
    return "-".join([PREFIX.decode(), str(index), *groups])


def parse_share(text: bytes | bytearray) -> tuple[int, bytearray]:
    """(index, value) from a share's text; one trailing newline is fine. Raises ShareRefused.

    Decoded byte by byte into a bytearray, like keysource.raw_key: no immutable copy of the value.
    """
    end = len(text)
    while end and text[end - 1] in b"\r\n \t":
        end -= 1
    start = 0
    while start < end and text[start] in b" \t":
        start += 1
    if end - start > MAX_TEXT or end - start < len(PREFIX) + 2:
        raise ShareRefused(ShareRefusal.MALFORMED)
    head = bytes(text[start : start + len(PREFIX) + 1]).upper()  # the public prefix only
    if head[: len(PREFIX)] != PREFIX or head[-1:] not in (b"-", b" "):
        raise ShareRefused(ShareRefusal.MALFORMED)
    pos = start + len(PREFIX) + 1
    index = 0
    digits_seen = 0
    while pos < end and 0x30 <= text[pos] <= 0x39:
        index = index * 10 + text[pos] - 0x30
        digits_seen += 1
        pos += 1
    if not 1 <= digits_seen <= 3 or pos >= end or text[pos] not in b"- ":
        raise ShareRefused(ShareRefusal.MALFORMED)
    if not 1 <= index <= MAX_INDEX:
        raise ShareRefused(ShareRefusal.BAD_INDEX)
    digits = bytearray(_DIGITS + _CHECK)
    n = 0
    value = bytearray(SECRET_LEN)
    try:
        for c in text[pos:end]:
            if c in b"- ":
                continue
            d = _VALUES.get(c)
            if d is None or n >= len(digits):
                raise ShareRefused(ShareRefusal.MALFORMED, index=index)
            digits[n] = d
            n += 1
        if n != len(digits):
            raise ShareRefused(ShareRefusal.MALFORMED, index=index)
        acc, bits, k = 0, 0, 0
        for d in digits[:_DIGITS]:
            acc = (acc << 5 | d) & 0x1FFF
            bits += 5
            if bits >= 8:
                bits -= 8
                value[k] = (acc >> bits) & 0xFF
                k += 1
        if acc & ((1 << bits) - 1):
            raise ShareRefused(ShareRefusal.MALFORMED, index=index)  # padding bits: one spelling only
        expected = bytes(_VALUES[c] for c in _check_value(index, value))
        if not hmac.compare_digest(expected, bytes(digits[_DIGITS:])):
            raise ShareRefused(ShareRefusal.BAD_CHECKSUM, index=index)
        return index, value
    except ShareRefused:
        value[:] = bytes(SECRET_LEN)
        raise
    finally:
        digits[:] = bytes(len(digits))


# --- what the state keeps: M, N, a verifier per share, the custodians' names ----------------------


def _verifier(salt: bytes, index: int, value: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(_VERIFIER_TAG + salt + bytes((index,)) + bytes(value)).digest()


@dataclass
class ShareSet:
    """The public record of a split: never a share, only a salted hash of each."""

    threshold: int
    count: int
    salts: dict[int, bytes]
    verifiers: dict[int, bytes]
    custodians: dict[int, str] = field(default_factory=dict)

    @classmethod
    def record(
        cls, shares: Sequence[tuple[int, bytearray]], *, threshold: int, custodians: Sequence[str]
    ) -> ShareSet:
        salts = {i: os.urandom(16) for i, _ in shares}
        return cls(
            threshold=threshold,
            count=len(shares),
            salts=salts,
            verifiers={i: _verifier(salts[i], i, v) for i, v in shares},
            custodians=dict(zip((i for i, _ in shares), custodians, strict=True)),
        )

    def matches(self, index: int, value: bytes | bytearray | memoryview) -> bool:
        expected = self.verifiers.get(index)
        if expected is None:
            return False
        return hmac.compare_digest(expected, _verifier(self.salts[index], index, value))

    def to_json(self, b64: Callable[[bytes], str]) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "count": self.count,
            "shares": {
                str(i): {
                    "salt": b64(self.salts[i]),
                    "verifier": b64(self.verifiers[i]),
                    "custodian": self.custodians.get(i, ""),
                }
                for i in sorted(self.verifiers)
            },
        }

    @classmethod
    def from_json(cls, obj: Any, unb64: Callable[[str], bytes]) -> ShareSet:
        shares = {int(i): s for i, s in obj["shares"].items()}
        out = cls(
            threshold=int(obj["threshold"]),
            count=int(obj["count"]),
            salts={i: unb64(s["salt"]) for i, s in shares.items()},
            verifiers={i: unb64(s["verifier"]) for i, s in shares.items()},
            custodians={i: str(s["custodian"]) for i, s in shares.items()},
        )
        check_parameters(out.count, out.threshold)
        if sorted(shares) != list(range(1, out.count + 1)):
            raise ValueError("share indices are 1..count")
        return out


# --- keyd's side: the shares delivered so far ---------------------------------------------------


class ShareCollector:
    """The shares delivered since keyd was sealed, each in its own locked page until M are in.

    Not thread-safe on its own: the barrier calls it under its lock. Every delivery, refusal,
    discard and the combination is an event; events name the index and the deliverer, never a value.
    """

    def __init__(
        self,
        shares: ShareSet,
        *,
        timeout: float,
        events: EventSink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._set = shares
        self._timeout = timeout
        self._events = events
        self._clock = clock
        self._held: dict[int, tuple[LockedSecret, float]] = {}

    def progress(self) -> dict[str, Any]:
        """For `status`: how many are held, how many are needed, and which indices (public numbers)."""
        return {
            "received": len(self._held),
            "threshold": self._set.threshold,
            "count": self._set.count,
            "indices": sorted(self._held),
        }

    def offer(self, content: bytearray, *, uid: int | None) -> bytearray | None:
        """One delivery: a share's text, and `login=NAME` on a second line when `keyd unseal` wrote it.

        Returns the combined master once `threshold` valid shares are held (they are wiped then);
        None while more are needed or when this one was refused. Always wipes `content`.
        """
        self.expire()
        who: dict[str, Value] = {} if uid is None else {"uid": uid}
        try:
            share_line, login = _delivery(content)
            who |= {"login": login} if login else {}
            try:
                index, value = parse_share(share_line)
            finally:
                wipe(share_line)
        except ShareRefused as exc:
            self._refused(exc, who)
            return None
        finally:
            wipe(content)
        try:
            if index in self._held:
                self._events.emit(Event.SHARE_DUPLICATE, index=index, **who)
                return None
            if not self._set.matches(index, value):
                self._refused(ShareRefused(ShareRefusal.WRONG_SHARE, index=index), who)
                return None
            self._held[index] = (LockedSecret(value), self._clock())
        finally:
            wipe(value)
        self._events.emit(
            Event.SHARE_DELIVERED, index=index, received=len(self._held), threshold=self._set.threshold, **who
        )
        if len(self._held) < self._set.threshold:
            return None
        indices = sorted(self._held)
        views = [(i, self._held[i][0].view()) for i in indices]
        try:
            master = combine(views)
        finally:
            for _, view in views:
                view.release()
            self.clear()
        self._events.emit(
            Event.SHARES_COMBINED, indices=",".join(map(str, indices)), threshold=self._set.threshold
        )
        return master

    def expire(self) -> None:
        """Discard (and report) every share that has waited longer than the timeout."""
        now = self._clock()
        for index, (secret, since) in sorted(self._held.items()):
            if now - since > self._timeout:
                secret.close()
                del self._held[index]
                self._events.emit(Event.SHARE_TIMED_OUT, index=index, waited=int(now - since))

    def clear(self) -> None:
        for secret, _ in self._held.values():
            secret.close()
        self._held.clear()

    def _refused(self, exc: ShareRefused, who: dict[str, Value]) -> None:
        fields: dict[str, Value] = {"reason": exc.reason.value, **who}
        if exc.index is not None:
            fields["index"] = exc.index
        self._events.emit(Event.SHARE_REFUSED, **fields)


LOGIN_RE = re.compile(rb"login=([A-Za-z0-9][A-Za-z0-9._@+-]{0,63})")


def _delivery(content: bytearray) -> tuple[bytearray, str | None]:
    """Split a drop file's content into the share's line and the login `keyd unseal` added."""
    nl = content.find(b"\n")
    if nl < 0:
        return bytearray(content), None
    rest = bytes(content[nl + 1 :]).strip(b"\r\n")  # after the share: public text only
    share_line = bytearray(content[: nl + 1])
    if not rest:
        return share_line, None
    m = LOGIN_RE.fullmatch(rest)
    if m is None:
        wipe(share_line)
        raise ShareRefused(ShareRefusal.MALFORMED)
    return share_line, m.group(1).decode("ascii")


def combined_master(secret: bytearray) -> bytearray:
    """The master as the collector combined it (32 raw bytes): a copy the caller owns."""
    if len(secret) != SECRET_LEN:
        raise ValueError("a combined master is 32 bytes")
    return bytearray(secret)
