"""keyd/shares.py: Shamir over GF(256), the share's text form, the state's verifiers and the collector."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyd import shares
from keyd.events import Event, MemorySink
from keyd.shares import ShareCollector, ShareRefusal, ShareRefused, ShareSet, format_share, parse_share


def _slow_mul(a: int, b: int) -> int:
    """Carry-less multiplication modulo the AES polynomial, bit by bit: the reference."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return out


def test_field_tables_are_the_aes_field() -> None:
    for a in range(256):
        for b in range(256):
            assert shares.mul(a, b) == _slow_mul(a, b)
        for b in range(1, 256):
            assert shares.mul(shares.div(a, b), b) == a
    with pytest.raises(ZeroDivisionError):
        shares.div(1, 0)


params = st.integers(min_value=2, max_value=shares.MAX_SHARES).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=2, max_value=n))
)


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), nm=params, data=st.data())
def test_any_m_shares_rebuild_and_fewer_do_not(
    secret: bytes, nm: tuple[int, int], data: st.DataObject
) -> None:
    n, m = nm
    split = shares.split(secret, count=n, threshold=m)
    assert [i for i, _ in split] == list(range(1, n + 1))
    chosen = data.draw(st.permutations(split))
    assert shares.combine(chosen[:m]) == secret
    assert shares.combine(chosen) == secret  # more than M: still the same polynomial
    if m > 2:
        assert shares.combine(chosen[: m - 1]) != secret
    assert all(v != secret for _, v in split)  # no share is the secret itself


def test_every_subset_of_a_small_split() -> None:
    secret = os.urandom(32)
    split = shares.split(secret, count=5, threshold=3)
    for k in (2, 3, 4, 5):
        for subset in itertools.combinations(split, k):
            assert (shares.combine(subset) == secret) is (k >= 3)


@pytest.mark.parametrize(
    ("count", "threshold"),
    [(3, 1), (1, 1), (2, 3), (17, 2), (16, 17), (0, 0), (3, 0), (-1, 2)],
)
def test_bad_parameters_are_refused(count: int, threshold: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        shares.split(os.urandom(32), count=count, threshold=threshold)


def test_combine_refuses_bad_points() -> None:
    split = shares.split(os.urandom(32), count=3, threshold=2)
    points = "at least two shares with distinct indices"
    with pytest.raises(ValueError, match=points):
        shares.combine(split[:1])
    with pytest.raises(ValueError, match=points):
        shares.combine([split[0], split[0]])
    with pytest.raises(ValueError, match=points):
        shares.combine([(0, split[0][1]), split[1]])
    with pytest.raises(ValueError, match=points):
        shares.combine([(256, split[0][1]), split[1]])
    with pytest.raises(ValueError, match="32 bytes"):
        shares.split(b"short", count=3, threshold=2)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(min_value=1, max_value=255), value=st.binary(min_size=32, max_size=32))
def test_text_round_trips_in_any_case_and_grouping(index: int, value: bytes) -> None:
    text = format_share(index, value)
    assert text.startswith(f"SR1-{index}-")
    assert text.isascii()
    assert parse_share(text.encode()) == (index, bytearray(value))
    assert parse_share(text.lower().encode() + b"\r\n") == (index, bytearray(value))
    spaced = text.replace("-", " ", 1).replace("-", " ")
    assert parse_share(spaced.encode()) == (index, bytearray(value))


@settings(max_examples=200, deadline=None)
@given(value=st.binary(min_size=32, max_size=32), data=st.data())
def test_a_single_mistyped_digit_is_caught(value: bytes, data: st.DataObject) -> None:
    text = format_share(3, value)
    body = text.index("-", 4) + 1
    pos = data.draw(st.integers(min_value=body, max_value=len(text) - 1))
    if text[pos] == "-":
        return
    other = data.draw(st.sampled_from([c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" if c != text[pos]]))
    typo = text[:pos] + other + text[pos + 1 :]
    with pytest.raises(ShareRefused) as exc:
        parse_share(typo.encode())
    # A typo in the value or the check value: the check catches it (or, in the last value digit, the
    # padding bits that must be zero).
    assert exc.value.reason in (ShareRefusal.BAD_CHECKSUM, ShareRefusal.MALFORMED)


def _with_check(index: int, value: bytes) -> str:
    """A share text for any index 0..255, with a correct check value (as an attacker could make)."""
    return f"SR1-{index}-" + format_share(1, value).split("-", 2)[2][:-4] + shares.check_value(index, value)


VALUE = bytes(range(32))
GOOD = format_share(2, VALUE)

HOSTILE = [
    ("empty", b"", ShareRefusal.MALFORMED),
    ("bad check value", (GOOD[:-1] + ("A" if GOOD[-1] != "A" else "B")).encode(), ShareRefusal.BAD_CHECKSUM),
    ("index retyped", GOOD.replace("SR1-2-", "SR1-3-").encode(), ShareRefusal.BAD_CHECKSUM),
    ("index 0", _with_check(0, VALUE).encode(), ShareRefusal.BAD_INDEX),
    ("index 256", b"SR1-256-" + GOOD.split("-", 2)[2].encode(), ShareRefusal.BAD_INDEX),
    ("index with four digits", b"SR1-1000-" + GOOD.split("-", 2)[2].encode(), ShareRefusal.MALFORMED),
    ("no index", b"SR1--" + GOOD.split("-", 2)[2].encode(), ShareRefusal.MALFORMED),
    ("one digit short", GOOD[:-6].encode() + GOOD[-5:].encode(), ShareRefusal.MALFORMED),
    ("one digit long", GOOD.encode() + b"A", ShareRefusal.MALFORMED),
    ("half a share", GOOD[:40].encode(), ShareRefusal.MALFORMED),
    ("other prefix", GOOD.replace("SR1", "SR2").encode(), ShareRefusal.MALFORMED),
    ("a raw hex key", os.urandom(32).hex().encode(), ShareRefusal.MALFORMED),
    ("non-ASCII digit", GOOD.replace(GOOD[10], "É", 1).encode(), ShareRefusal.MALFORMED),
    ("latin-1 byte", GOOD.encode()[:-1] + b"\xe9", ShareRefusal.MALFORMED),
    ("digit 1 (not base32)", (GOOD[:8] + "1" + GOOD[9:]).encode(), ShareRefusal.MALFORMED),
    ("NUL inside", GOOD.encode()[:12] + b"\x00" + GOOD.encode()[13:], ShareRefusal.MALFORMED),
    ("oversize", GOOD.encode() + b"-" * 300, ShareRefusal.MALFORMED),
    ("two shares on one line", (GOOD + "-" + GOOD).encode(), ShareRefusal.MALFORMED),
]


@pytest.mark.parametrize(("text", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_share_texts_are_refused(text: bytes, reason: ShareRefusal) -> None:
    with pytest.raises(ShareRefused) as exc:
        parse_share(bytearray(text))
    assert exc.value.reason is reason
    assert GOOD not in str(exc.value)
    assert VALUE.hex() not in str(exc.value)


def test_padding_bits_have_one_spelling() -> None:
    text = format_share(1, bytes(32))
    last = text.split("-")[-2]  # the group holding the last value digit
    assert last.endswith("A")
    with pytest.raises(ShareRefused):
        parse_share(text.replace(last + "-", last[:-1] + "B-").encode())


# --- the record and the collector ---------------------------------------------------------------


def _set(n: int = 3, m: int = 2) -> tuple[bytes, list[tuple[int, bytearray]], ShareSet]:
    secret = os.urandom(32)
    split = shares.split(secret, count=n, threshold=m)
    return secret, split, ShareSet.record(split, threshold=m, custodians=[f"c{i}" for i in range(n)])


def test_the_record_verifies_shares_and_survives_json() -> None:
    import base64

    _, split, record = _set()
    again = ShareSet.from_json(record.to_json(lambda b: base64.b64encode(b).decode()), base64.b64decode)
    assert again == record
    assert all(again.matches(i, v) for i, v in split)
    assert not again.matches(1, split[1][1])
    assert not again.matches(4, split[0][1])
    assert again.custodians == {1: "c0", 2: "c1", 3: "c2"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _deliver(c: ShareCollector, index: int, value: bytes, login: str | None = None) -> bytearray | None:
    text = format_share(index, value).encode() + b"\n" + (f"login={login}\n".encode() if login else b"")
    return c.offer(bytearray(text), uid=1000)


def test_the_collector_combines_at_m_and_refuses_the_rest() -> None:
    secret, split, record = _set(n=3, m=2)
    sink = MemorySink()
    clock = Clock()
    c = ShareCollector(record, timeout=60, events=sink, clock=clock)
    assert _deliver(c, *split[2], login="carol") is None
    assert c.progress() == {"received": 1, "threshold": 2, "count": 3, "indices": [3]}
    assert _deliver(c, *split[2]) is None  # duplicate
    assert _deliver(c, 1, bytes(32)) is None  # wrong share (valid text, not this key's)
    assert c.offer(bytearray(b"SR1-1-nonsense"), uid=0) is None
    assert c.offer(bytearray(format_share(1, split[0][1]).encode() + b"\nrm -rf /\n"), uid=0) is None
    assert c.progress()["received"] == 1  # refusals change nothing
    master = _deliver(c, *split[0])
    assert master == secret
    assert c.progress()["received"] == 0
    names = sink.names()
    assert names == [
        Event.SHARE_DELIVERED,
        Event.SHARE_DUPLICATE,
        Event.SHARE_REFUSED,
        Event.SHARE_REFUSED,
        Event.SHARE_REFUSED,
        Event.SHARE_DELIVERED,
        Event.SHARES_COMBINED,
    ]
    fields = [f for _, f in sink.events]
    assert fields[0] == {"index": 3, "uid": 1000, "login": "carol", "received": 1, "threshold": 2}
    assert fields[2] == {"reason": "wrong_share", "index": 1, "uid": 1000}
    assert fields[3] == {"reason": "malformed", "index": 1, "uid": 0}
    assert fields[6] == {"indices": "1,3", "threshold": 2}
    everything = repr(sink.events)
    for _, value in split:
        assert format_share(1, value)[6:20] not in everything


def test_a_share_waiting_too_long_is_discarded_and_never_unseals_alone() -> None:
    _, split, record = _set(n=3, m=3)
    sink = MemorySink()
    clock = Clock()
    c = ShareCollector(record, timeout=60, events=sink, clock=clock)
    _deliver(c, *split[0])
    clock.now += 30
    _deliver(c, *split[1])
    clock.now += 31
    c.expire()
    assert c.progress()["indices"] == [2]
    assert sink.events[-1] == (Event.SHARE_TIMED_OUT, {"index": 1, "waited": 61})
    assert _deliver(c, *split[2]) is None  # 2 of 3: still waiting
    clock.now += 100
    assert _deliver(c, *split[0]) is None  # the others expired first: 1 of 3 again
    assert c.progress()["indices"] == [1]
    c.clear()
    assert c.progress()["received"] == 0
