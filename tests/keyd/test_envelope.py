"""The ciphertext format on its own: one table of hostile values and the exact refusal each gets.

keyd (through the barrier), the client's key_version and the web app's count of versions all ask
keyd/envelope.py; this checks that they are the same code and that the parse is strict. What keyd
answers for each kind of damage, end to end, is tests/keyd/test_damage.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keyd.client
from keyd import envelope
from keyd.envelope import MalformedCiphertext

NONCE = bytes(range(12))
SEALED = bytes(16 + 5)  # a 5-byte plaintext's ciphertext and tag
GOOD = envelope.header(7) + NONCE + SEALED
SHORT = "not a keyd ciphertext: too short"
UNKNOWN = "not a keyd ciphertext: unknown format"

# (name, stored value, the refusal key_version and split give). One row per kind of damage that can be
# seen without the key; a flipped tag or body byte parses and is keyd's to refuse when it opens it.
REFUSED = [
    ("empty", b"", SHORT),
    ("one-byte", b"\x01", SHORT),
    ("header-alone", GOOD[:5], SHORT),
    ("one-byte-short-of-a-tag", GOOD[: envelope.OVERHEAD - 1], SHORT),
    ("format-byte-0", b"\x00" + GOOD[1:], UNKNOWN),
    ("format-byte-2", b"\x02" + GOOD[1:], UNKNOWN),
    ("format-byte-ff", b"\xff" + GOOD[1:], UNKNOWN),
    ("key-version-0", GOOD[:1] + bytes(4) + GOOD[5:], UNKNOWN),
    ("ascii-garbage", b"not a ciphertext at all, plainly!", UNKNOWN),
]


@pytest.mark.parametrize(("name", "value", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_what_is_not_a_ciphertext_is_refused(name: str, value: bytes, message: str) -> None:
    for parse in (envelope.key_version, envelope.split):
        with pytest.raises(MalformedCiphertext) as info:
            parse(value)
        assert str(info.value) == message  # a fixed message: never the value


def test_a_refusal_is_a_value_error() -> None:
    # The web app catches ValueError: it must not need keyd's own exception names.
    assert issubclass(MalformedCiphertext, ValueError)


@pytest.mark.parametrize(
    ("value", "version"),
    [
        (GOOD, 7),
        (envelope.header(65536) + NONCE + bytes(40), 65536),
        (envelope.header(2**32 - 1) + NONCE + bytes(16), 2**32 - 1),  # keyd refuses it as unknown
    ],
)
def test_key_version_and_split(value: bytes, version: int) -> None:
    assert envelope.key_version(value) == version
    v, head, nonce, sealed = envelope.split(value)
    assert (v, head, nonce) == (version, value[:5], NONCE)
    assert envelope.join(head, nonce, sealed) == value


def test_the_header_alone() -> None:
    assert envelope.HEADER_LEN == 5
    assert envelope.header(7) == b"\x01\x00\x00\x00\x07"
    assert envelope.header_key_version(envelope.header(7)) == 7
    assert envelope.header_key_version(GOOD) == 7  # bytes after the header are not looked at
    for bad, message in [(b"", SHORT), (b"\x01\x00\x00\x07", SHORT), (b"\x02\x00\x00\x00\x07", UNKNOWN)]:
        with pytest.raises(MalformedCiphertext, match=message):
            envelope.header_key_version(bad)
    with pytest.raises(MalformedCiphertext, match=UNKNOWN):
        envelope.header_key_version(envelope.header(0))


def test_limits() -> None:
    assert envelope.OVERHEAD == 5 + 12 + 16
    assert envelope.MAX_CIPHERTEXT == envelope.MAX_PLAINTEXT + envelope.OVERHEAD == 16 * 1024 + 33


def test_the_client_re_exports_the_envelope_and_knows_no_format_of_its_own() -> None:
    assert keyd.client.key_version is envelope.key_version
    assert keyd.client.header_key_version is envelope.header_key_version
    assert (keyd.client.HEADER_LEN, keyd.client.OVERHEAD) == (envelope.HEADER_LEN, envelope.OVERHEAD)


@settings(max_examples=1000)
@given(value=st.binary(max_size=64))
def test_any_value_parses_or_is_refused_and_nothing_else(value: bytes) -> None:
    try:
        v, head, nonce, sealed = envelope.split(value)
    except MalformedCiphertext:
        return
    assert v >= 1
    assert envelope.join(head, nonce, sealed) == value
