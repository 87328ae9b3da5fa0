"""The wire protocol in isolation (keyd/protocol/): round trips, strictness, a fuzzed parser that
only says bad_request."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyd.errors import ErrorCode
from keyd.protocol import MAX_ITEMS, Op, ProtocolError, Reason
from keyd.protocol.request import encode_batch, encode_request, encode_single, parse_request
from keyd.protocol.response import (
    ErrorResponse,
    encode_error,
    encode_items,
    encode_json,
    encode_one,
    parse_response,
)

IDENT = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
ITEM = st.tuples(IDENT, IDENT, st.binary(max_size=64))


@settings(max_examples=300)
@given(
    op=st.sampled_from([Op.ENCRYPT_BATCH, Op.DECRYPT_BATCH, Op.REWRAP_BATCH]),
    actor=IDENT,
    purpose=IDENT,
    items=st.lists(ITEM, min_size=1, max_size=20),
)
def test_batch_requests_round_trip(
    op: Op, actor: str, purpose: str, items: list[tuple[str, str, bytes]]
) -> None:
    req = parse_request(encode_request(op, actor, purpose, items)[4:])
    assert (req.op, req.actor, req.purpose) == (op, actor, purpose)
    assert [(i[0].decode(), i[1].decode(), i[2]) for i in req.items] == items
    assert all(i[3] is None for i in req.items)


@settings(max_examples=2000)
@given(body=st.binary(max_size=200))
def test_parser_only_ever_refuses_with_bad_request(body: bytes) -> None:
    try:
        req = parse_request(body)
    except ProtocolError as exc:
        refusal = exc
    else:
        refusal = None
        assert req.failed == sum(i[3] is not None for i in req.items)
        # Whatever parses re-encodes to exactly the same bytes: one encoding per request.
        items = [(i[0].decode(), i[1].decode(), i[2]) for i in req.items]
        if all(i[3] is None for i in req.items):
            assert encode_request(req.op, req.actor, req.purpose, items or None, req.arg)[4:] == body
    if refusal is not None:
        assert refusal.code is ErrorCode.BAD_REQUEST
        assert refusal.refusal in Reason


@settings(max_examples=500)
@given(
    prefix=st.binary(max_size=5),
    items=st.lists(ITEM, min_size=1, max_size=3),
    cut=st.integers(min_value=1, max_value=40),
)
def test_truncated_valid_requests_are_refused(
    prefix: bytes, items: list[tuple[str, str, bytes]], cut: int
) -> None:
    body = encode_request(Op.DECRYPT_BATCH, "alice", "test", items)[4:]
    with pytest.raises(ProtocolError) as info:
        parse_request(body[: max(0, len(body) - cut)])
    assert info.value.refusal in (Reason.TRUNCATED, Reason.TRAILING_BYTES, Reason.BAD_COUNT)


def test_batch_limits() -> None:
    items = [("r", "f", b"")] * MAX_ITEMS
    assert len(parse_request(encode_request(Op.ENCRYPT_BATCH, "a", "p", items)[4:]).items) == MAX_ITEMS
    body = encode_request(Op.ENCRYPT_BATCH, "a", "p", [*items, ("r", "f", b"")])[4:]
    with pytest.raises(ProtocolError) as info:
        parse_request(body)
    assert info.value.refusal is Reason.BAD_COUNT


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"actor": "", "purpose": "p"}, Reason.BAD_ACTOR),
        ({"actor": "a b", "purpose": "p"}, Reason.BAD_ACTOR),
        ({"actor": "a", "purpose": "-p"}, Reason.BAD_PURPOSE),
        ({"actor": 5, "purpose": "p"}, Reason.BAD_ACTOR),
    ],
)
def test_encoder_refuses_what_the_server_would(kwargs: dict[str, object], reason: Reason) -> None:
    with pytest.raises(ProtocolError) as info:
        encode_request(Op.STATUS, **kwargs)  # type: ignore[arg-type]
    assert info.value.refusal is reason


def test_responses_round_trip() -> None:
    assert parse_response(encode_error(ErrorCode.SEALED, Reason.SEALED)[4:]) == ErrorResponse(
        ErrorCode.SEALED, "sealed"
    )
    outcomes = [b"abc", (ErrorCode.INTEGRITY_FAILURE, Reason.AUTHENTICATION_FAILED), b""]
    assert parse_response(encode_items(outcomes)[4:]) == [  # type: ignore[arg-type]
        b"abc",
        ErrorResponse(ErrorCode.INTEGRITY_FAILURE, "authentication_failed"),
        b"",
    ]
    assert parse_response(encode_json({"sealed": True})[4:]) == {"sealed": True}


@settings(max_examples=1000)
@given(body=st.binary(max_size=100))
def test_client_response_parser_is_strict(body: bytes) -> None:
    from keyd.protocol.response import ResponseError

    # Anything but a parsed answer or ResponseError (IndexError, struct.error...) fails the test.
    with contextlib.suppress(ResponseError):
        parse_response(body)


def test_response_with_unknown_reason_is_refused() -> None:
    from keyd.protocol.response import ResponseError

    with pytest.raises(ResponseError):
        parse_response(b"\x01\x01\x04nope")
    with pytest.raises(ResponseError):
        parse_response(b"\x01\x00\x01" + struct.pack(">H", 1) + b"\x00" + struct.pack(">I", 9) + b"x")


@settings(max_examples=200)
@given(op=st.sampled_from([Op.ENCRYPT, Op.DECRYPT, Op.REWRAP]), actor=IDENT, purpose=IDENT, item=ITEM)
def test_single_fast_paths_match_the_general_ones(
    op: Op, actor: str, purpose: str, item: tuple[str, str, bytes]
) -> None:
    assert encode_single(op, actor, purpose, *item) == encode_request(op, actor, purpose, [item])
    assert encode_one(item[2]) == encode_items([item[2]])
    assert parse_response(encode_one(item[2])[4:]) == [item[2]]


@settings(max_examples=200)
@given(
    items=st.lists(
        st.tuples(st.one_of(IDENT, st.just(""), st.just("bad id")), IDENT, st.binary(max_size=32)),
        min_size=1,
        max_size=10,
    )
)
def test_client_batch_encoder_sends_only_what_the_server_accepts(items: list[tuple[str, str, bytes]]) -> None:
    from keyd.client import Context

    request, errors = encode_batch(Op.ENCRYPT_BATCH, "a", "p", [(Context(r, f), d) for r, f, d in items])
    expected_errors = [None if r not in ("", "bad id") else Reason.BAD_RECORD_ID for r, _, _ in items]
    assert errors == expected_errors
    sent = [(r, f, d) for (r, f, d), e in zip(items, errors, strict=True) if e is None]
    if not sent:
        assert request is None
        return
    assert request == encode_request(Op.ENCRYPT_BATCH, "a", "p", sent)


@settings(max_examples=1000)
@given(
    records=st.lists(
        st.one_of(
            st.from_regex(rb"[A-Za-z0-9][A-Za-z0-9._:/-]{0,130}", fullmatch=True),
            st.binary(max_size=8),
            st.sampled_from([b"", b"\n", b"a\nb", b"a\n", b"\na", b"-a", b"a" * 128, b"a" * 129]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_batch_record_check_is_the_per_id_check(records: list[bytes]) -> None:
    from keyd.protocol import RECORD_RE, all_records_ok

    assert all_records_ok(records) == all(RECORD_RE.fullmatch(r) is not None for r in records)


@settings(max_examples=300)
@given(
    items=st.lists(
        st.tuples(st.sampled_from(["r1", "a\nb", "r2", ""]), IDENT, st.binary(max_size=8)),
        min_size=1,
        max_size=6,
    )
)
def test_server_marks_exactly_the_bad_record_ids(items: list[tuple[str, str, bytes]]) -> None:
    # encode_request refuses bad ids, so build the body by hand: the server must judge each one.
    body = b"\x01" + bytes((Op.ENCRYPT_BATCH,)) + b"\x01a\x01p" + struct.pack(">H", len(items))
    for r, f, d in items:
        body += bytes((len(r),)) + r.encode() + bytes((len(f),)) + f.encode() + struct.pack(">I", len(d)) + d
    req = parse_request(body)
    assert req.failed == sum(i[3] is not None for i in req.items)
    assert [i[3] for i in req.items] == [
        None if r in ("r1", "r2") else Reason.BAD_RECORD_ID for r, _, _ in items
    ]


@dataclass(frozen=True)
class _Ctx:
    record_id: str
    field: str


# Frames as keyd and its client have always written them: a deployed keyd and web app upgrade one at a
# time, so the bytes of each message must never change (a new format needs a new PROTOCOL_VERSION).
GOLDEN = [
    (
        "status",
        lambda: encode_request(Op.STATUS, "keyd-client", "status"),
        "0000001501010b6b6579642d636c69656e7406737461747573",
    ),
    (
        "encrypt",
        lambda: encode_single(Op.ENCRYPT, "alice", "card.create", "cust-42", "pan", b"4111111111111111"),
        "00000036010205616c6963650b636172642e637265617465000107637573742d34320370616e00000010"
        "34313131313131313131313131313131",
    ),
    (
        "decrypt-batch-with-a-bad-id-left-out",
        lambda: encode_batch(
            Op.DECRYPT_BATCH,
            "bob",
            "export",
            [(_Ctx("r1", "pan"), b"abc"), (_Ctx("bad id", "pan"), b"x"), (_Ctx("r2", "note"), b"")],
        )[0],
        "00000029010603626f62066578706f727400020272310370616e00000003616263027232046e6f746500000000",
    ),
    (
        "retire",
        lambda: encode_request(Op.RETIRE, "root", "operator", arg=2),
        "00000014011204726f6f74086f70657261746f7200000002",
    ),
    (
        "error",
        lambda: encode_error(ErrorCode.INTEGRITY_FAILURE, Reason.RETIRED_VERSION),
        "0000001201040f726574697265645f76657273696f6e",
    ),
    (
        "items",
        lambda: encode_items([b"abc", (ErrorCode.QUOTA_EXCEEDED, Reason.EMPLOYEE_MINUTE), b""]),
        "0000002301000100030000000003616263020f656d706c6f7965655f6d696e7574650000000000",
    ),
    ("one", lambda: encode_one(b"plain"), "0000000f01000100010000000005706c61696e"),
    (
        "json",
        lambda: encode_json({"sealed": False, "key_version": 2}),
        "000000230100027b227365616c6564223a66616c73652c226b65795f76657273696f6e223a327d",
    ),
    (
        # key_kind "shares": status gains one object; a client that does not know it ignores it.
        "status-with-shares",
        lambda: encode_json(
            {
                "sealed": True,
                "mode": "file",
                "key_version": 1,
                "shares": {"received": 1, "threshold": 2, "count": 3, "indices": [3]},
            }
        ),
        "0000006e0100027b227365616c6564223a747275652c226d6f6465223a2266696c65222c226b65795f76657273696f6e"
        "223a312c22736861726573223a7b227265636569766564223a312c227468726573686f6c64223a322c22636f756e7422"
        "3a332c22696e6469636573223a5b335d7d7d",
    ),
]


@pytest.mark.parametrize(("name", "make", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_the_bytes_on_the_wire_never_change(
    name: str, make: Callable[[], bytes | None], expected: str
) -> None:
    assert make() == bytes.fromhex(expected)
