"""Every kind of damage to a stored value is one error: IntegrityFailure, with an integrity_failure
event for each refusal, through the real daemon. Single decrypt, rewrap and batch alike; the daemon
keeps serving the undamaged values after each.

The keyd here has two key versions and has retired the first, so "a retired key version" is a real
retirement, not a made-up number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from keyd.client import Context, KeydClient
from keyd.envelope import MAX_CIPHERTEXT
from keyd.errors import IntegrityFailure, KeydError
from keyd.protocol import MAX_FRAME
from tests.keyd.conftest import ROOT, Running, unsealed_keyd

PAN = b"4111111111111111"
CTX = Context("card-42", "pan")
OTHER = Context("card-43", "pan")


def _version(v: int) -> Callable[[bytes], bytes]:
    return lambda b: b[:1] + v.to_bytes(4, "big") + b[5:]


# (name, how the stored value is damaged, the reason keyd gives). `swap` damage is the stored value of
# another card (same field) or of another field of the same card: see _stored.
DAMAGE: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("flipped-tag-byte", lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "authentication_failed"),
    ("flipped-body-byte", lambda b: b[:17] + bytes([b[17] ^ 1]) + b[18:], "authentication_failed"),
    ("flipped-nonce-byte", lambda b: b[:6] + bytes([b[6] ^ 1]) + b[7:], "authentication_failed"),
    ("zeroed-key-version", _version(0), "bad_ciphertext"),
    ("key-version-never-had", _version(256), "unknown_key_version"),
    ("key-version-max", _version(2**32 - 1), "unknown_key_version"),
    ("retired-key-version", _version(1), "retired_version"),
    ("format-byte-0", lambda b: b"\x00" + b[1:], "bad_ciphertext"),
    ("format-byte-2", lambda b: b"\x02" + b[1:], "bad_ciphertext"),
    ("format-byte-ff", lambda b: b"\xff" + b[1:], "bad_ciphertext"),
    ("truncated-by-one", lambda b: b[:-1], "authentication_failed"),
    ("truncated-to-header", lambda b: b[:5], "bad_ciphertext"),
    ("truncated-below-overhead", lambda b: b[:32], "bad_ciphertext"),
    ("one-byte", lambda b: b[:1], "bad_ciphertext"),
    ("empty", lambda b: b"", "bad_ciphertext"),
    ("appended-byte", lambda b: b + b"\x00", "authentication_failed"),
    ("oversized", lambda b: b + b"\x00" * MAX_CIPHERTEXT, "too_large"),
    ("oversized-past-a-frame", lambda b: b + b"\x00" * (MAX_FRAME + 1), "too_large"),
    ("swapped-with-another-card", lambda b: b, "authentication_failed"),
    ("swapped-with-another-field", lambda b: b, "authentication_failed"),
]
IDS = [d[0] for d in DAMAGE]


def test_every_documented_kind_of_damage_has_a_row() -> None:
    """docs/keyd.md's refusal table lists the integrity_failure reasons: each is made by a row here."""
    doc = (ROOT / "docs" / "keyd.md").read_text()
    documented = set(re.findall(r"^\| `integrity_failure` \| `(\w+)` \|", doc, re.MULTILINE))
    assert documented == {reason for _, _, reason in DAMAGE}


@pytest.fixture(scope="module")
def retired() -> Iterator[tuple[Running, bytes]]:
    """An unsealed keyd at key version 2 with version 1 retired, and one genuine version-1 value."""
    with unsealed_keyd() as r:
        with r.keyd.client() as c:
            old = c.encrypt(PAN, context=CTX, actor="alice", purpose="t")
        r.keyd.cli("rotate")
        r.keyd.cli("retire", "--min-version", "2")
        yield r, old


def _stored(c: KeydClient, name: str, damage: Callable[[bytes], bytes]) -> bytes:
    """The damaged value stored for CTX."""
    if name == "swapped-with-another-card":
        return c.encrypt(b"5555555555554444", context=OTHER, actor="alice", purpose="t")
    if name == "swapped-with-another-field":
        return c.encrypt(
            b"ADA LOVELACE", context=Context(CTX.record_id, "cardholder"), actor="a", purpose="t"
        )
    return damage(c.encrypt(PAN, context=CTX, actor="alice", purpose="t"))


def _integrity_events(r: Running) -> list[dict[str, object]]:
    return [e for e in r.keyd.events() if e["event"] == "integrity_failure"]


def _check_refusal(r: Running, before: int, exc: KeydError, reason: str, op: str) -> None:
    assert isinstance(exc, IntegrityFailure), f"{type(exc).__name__}: {exc.reason}"
    assert exc.reason == reason
    new = _integrity_events(r)[before:]
    assert len(new) == 1, new  # one event per request
    assert new[0]["op"] == op
    assert new[0]["reasons"] == reason
    assert new[0]["actor"] == "alice"


@pytest.mark.parametrize(("name", "damage", "reason"), DAMAGE, ids=IDS)
def test_every_damage_is_an_integrity_failure_with_an_event(
    retired: tuple[Running, bytes], name: str, damage: Callable[[bytes], bytes], reason: str
) -> None:
    r, _ = retired
    with r.keyd.client() as c:
        stored = _stored(c, name, damage)
        for op, call in (("decrypt", c.decrypt), ("rewrap", c.rewrap)):
            before = len(_integrity_events(r))
            with pytest.raises(KeydError) as info:
                call(stored, context=CTX, actor="alice", purpose="reveal:t")
            _check_refusal(r, before, info.value, reason, op)
        # Nothing else is affected: the same client still opens an undamaged value.
        good = c.encrypt(PAN, context=CTX, actor="alice", purpose="t")
        assert c.decrypt(good, context=CTX, actor="alice", purpose="t") == PAN


@pytest.mark.parametrize(("name", "damage", "reason"), DAMAGE, ids=IDS)
def test_a_damaged_value_in_a_batch_fails_alone(
    retired: tuple[Running, bytes], name: str, damage: Callable[[bytes], bytes], reason: str
) -> None:
    r, _ = retired
    with r.keyd.client() as c:
        good = c.encrypt(PAN, context=CTX, actor="alice", purpose="t")
        stored = _stored(c, name, damage)
        for op, call in (("decrypt_batch", c.decrypt_batch), ("rewrap_batch", c.rewrap_batch)):
            before = len(_integrity_events(r))
            out = call([(CTX, good), (CTX, stored), (CTX, good)], actor="alice", purpose="export")
            assert isinstance(out[0], bytes)
            assert isinstance(out[2], bytes)
            assert isinstance(out[1], KeydError)
            _check_refusal(r, before, out[1], reason, op)


def test_a_genuine_value_under_the_retired_version_is_refused_the_same_way(
    retired: tuple[Running, bytes],
) -> None:
    r, old = retired
    before = len(_integrity_events(r))
    with r.keyd.client() as c, pytest.raises(IntegrityFailure) as info:
        c.decrypt(old, context=CTX, actor="alice", purpose="t")
    _check_refusal(r, before, info.value, "retired_version", "decrypt")
    # The specific alert for a leftover of a retirement is still raised alongside.
    assert r.keyd.event_names()[-2:] == ["retired_version_used", "integrity_failure"]


def test_many_damaged_values_in_one_batch_are_one_event(retired: tuple[Running, bytes]) -> None:
    r, _ = retired
    before = len(_integrity_events(r))
    with r.keyd.client() as c:
        good = c.encrypt(PAN, context=CTX, actor="alice", purpose="t")
        damaged = [(CTX, _stored(c, n, d)) for n, d, _ in DAMAGE]
        out = c.decrypt_batch([(CTX, good), *damaged], actor="alice", purpose="export")
    assert out[0] == PAN
    assert all(isinstance(o, IntegrityFailure) for o in out[1:])
    (event,) = _integrity_events(r)[before:]
    assert event["items"] == len(DAMAGE)
    assert event["reasons"] == ",".join(sorted({reason for _, _, reason in DAMAGE}))
