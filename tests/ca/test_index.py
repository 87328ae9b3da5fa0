"""ca/index.py: the index round-trips exactly and anything unexpected is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import CorruptIndex
from ca.index import Entry, Index, Profile, Reason, RetiredCA, dump_index, parse_index

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _entry(serial: int, name: str = "alice", revoked: bool = False) -> Entry:
    return Entry(
        serial=format(serial, "x"),
        profile=Profile.EMPLOYEE,
        name=name,
        not_before=T0,
        not_after=T0 + timedelta(days=90),
        fingerprint=format(serial, "064x"),
        bound=not revoked,
        revoked_at=T0 + timedelta(days=1) if revoked else None,
        reason=Reason.AFFILIATION_CHANGED if revoked else None,
    )


@given(
    serials=st.sets(st.integers(min_value=1, max_value=2**159 - 1), max_size=8),
    crl=st.integers(min_value=0, max_value=10**9),
    revoked=st.booleans(),
)
def test_round_trip(serials: set[int], crl: int, revoked: bool) -> None:
    index = Index(
        entries=tuple(_entry(s, revoked=revoked) for s in sorted(serials)),
        crl_number=crl,
        root_crl_number=crl + 1,
        retired_issuing=(RetiredCA(serial="abc", revoked_at=T0, reason=Reason.SUPERSEDED),),
    )
    assert parse_index(dump_index(index)) == index


def _doc() -> dict[str, object]:
    doc: dict[str, object] = json.loads(
        dump_index(Index(entries=(_entry(0xABC),), crl_number=3, root_crl_number=1))
    )
    return doc


def _cert(doc: dict[str, object]) -> dict[str, object]:
    certs = doc["certificates"]
    assert isinstance(certs, list)
    return certs[0]  # type: ignore[no-any-return]


BAD = [
    ("not JSON", lambda d: "{", "the index is not valid JSON (JSONDecodeError); restore a backup"),
    ("a list", lambda d: [], "index: expected an object"),
    ("wrong version", lambda d: {**d, "version": 2}, "index: unsupported version 2"),
    ("negative CRL number", lambda d: {**d, "crl_number": -1}, "index: bad crl_number"),
    ("boolean CRL number", lambda d: {**d, "crl_number": True}, "index: bad crl_number"),
    ("extra top-level field", lambda d: {**d, "x": 1},
     "index: missing fields [], unexpected fields ['x']"),
    ("leading-zero serial", lambda d: (_cert(d).update(serial="0abc"), d)[1], "certificate #0: bad serial"),
    ("uppercase serial", lambda d: (_cert(d).update(serial="ABC"), d)[1], "certificate #0: bad serial"),
    ("short fingerprint", lambda d: (_cert(d).update(fingerprint="ab"), d)[1],
     "certificate #0: bad fingerprint"),
    ("unknown profile", lambda d: (_cert(d).update(profile="admin"), d)[1],
     "certificate #0: bad profile or revocation reason"),
    ("local time", lambda d: (_cert(d).update(not_after="2027-01-01T00:00:00"), d)[1],
     "certificate #0: timestamps must be in UTC"),
    ("reason without time", lambda d: (_cert(d).update(reason="superseded"), d)[1],
     "certificate #0: revocation time and reason must come together"),
    ("string bound flag", lambda d: (_cert(d).update(bound="yes"), d)[1], "certificate #0: bad 'bound' flag"),
    ("expires before start", lambda d: (_cert(d).update(not_after="2020-01-01T00:00:00+00:00"), d)[1],
     "certificate #0: expires before it starts"),
    ("missing field", lambda d: (_cert(d).pop("bound"), d)[1],
     "certificate #0: missing fields ['bound'], unexpected fields []"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_corrupt_index_is_refused(mutate: object, message: str) -> None:
    assert callable(mutate)
    doc = mutate(_doc())
    data = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    with pytest.raises(CorruptIndex) as info:
        parse_index(data)
    assert str(info.value) == message


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(CorruptIndex, match="not valid JSON"):
        parse_index(b"\xff\xfe")
