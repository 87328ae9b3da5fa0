"""Hostile frames and peers against the real daemon: each gets its exact refusal, and keyd keeps serving."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from keyd.client import Context, KeydClient
from keyd.errors import ErrorCode, Forbidden, Unavailable
from keyd.protocol import MAX_FRAME, Op
from keyd.protocol.request import encode_request
from keyd.protocol.response import ErrorResponse, parse_response
from tests.keyd.conftest import NOBODY, Running


def _exchange(path: os.PathLike[str], data: bytes, *, half_close: bool = False) -> bytes | None:
    """Send raw bytes; return the first answer body keyd sends, or None if it just hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(os.fspath(path))
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (size,) = struct.unpack(">I", head)
        body = b""
        while len(body) < size:
            chunk = s.recv(size - len(body))
            assert chunk, "keyd hung up mid-answer"
            body += chunk
        return body


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _body(op: int, actor: bytes = b"alice", purpose: bytes = b"test", rest: bytes = b"") -> bytes:
    return bytes((1, op, len(actor))) + actor + bytes((len(purpose),)) + purpose + rest


def _item(record: bytes = b"r1", field: bytes = b"pan", data: bytes = b"x") -> bytes:
    return bytes((len(record),)) + record + bytes((len(field),)) + field + struct.pack(">I", len(data)) + data


ONE = struct.pack(">H", 1)

# One row per hostile input: (id, raw bytes on the wire, half-close after sending, code, reason)
HOSTILE = [
    ("empty-frame", b"\x00\x00\x00\x00", False, ErrorCode.BAD_REQUEST, "empty_frame"),
    ("oversized-length", struct.pack(">I", MAX_FRAME + 1), False, ErrorCode.BAD_REQUEST, "frame_too_large"),
    ("max-length", b"\xff\xff\xff\xff", False, ErrorCode.BAD_REQUEST, "frame_too_large"),
    ("http-garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, ErrorCode.BAD_REQUEST, "frame_too_large"),
    ("truncated-header", b"\x00\x00", True, ErrorCode.BAD_REQUEST, "truncated"),
    ("truncated-body", struct.pack(">I", 100) + b"\x01\x02", True, ErrorCode.BAD_REQUEST, "truncated"),
    ("one-byte-body", _frame(b"\x01"), False, ErrorCode.BAD_REQUEST, "truncated"),
    (
        "json-instead",
        _frame(b'{"op":"encrypt","actor":"a"}'),
        False,
        ErrorCode.BAD_REQUEST,
        "unsupported_version",
    ),
    ("protocol-v2", _frame(b"\x02" + _body(1)[1:]), False, ErrorCode.BAD_REQUEST, "unsupported_version"),
    ("unknown-op", _frame(_body(99)), False, ErrorCode.BAD_REQUEST, "unknown_op"),
    ("op-zero", _frame(_body(0)), False, ErrorCode.BAD_REQUEST, "unknown_op"),
    ("empty-actor", _frame(_body(1, actor=b"")), False, ErrorCode.BAD_REQUEST, "bad_actor"),
    ("actor-newline", _frame(_body(1, actor=b"al\nice")), False, ErrorCode.BAD_REQUEST, "bad_actor"),
    ("actor-utf8", _frame(_body(1, actor="älice".encode())), False, ErrorCode.BAD_REQUEST, "bad_actor"),
    ("actor-65", _frame(_body(1, actor=b"a" * 65)), False, ErrorCode.BAD_REQUEST, "bad_actor"),
    ("actor-past-end", _frame(b"\x01\x01\x09ab"), False, ErrorCode.BAD_REQUEST, "truncated"),
    ("purpose-nul", _frame(_body(1, purpose=b"te\x00st")), False, ErrorCode.BAD_REQUEST, "bad_purpose"),
    ("purpose-missing", _frame(b"\x01\x01\x05alice"), False, ErrorCode.BAD_REQUEST, "truncated"),
    ("status-trailing", _frame(_body(1, rest=b"\x00")), False, ErrorCode.BAD_REQUEST, "trailing_bytes"),
    (
        "single-two-items",
        _frame(_body(2, rest=b"\x00\x02" + _item() * 2)),
        False,
        ErrorCode.BAD_REQUEST,
        "bad_count",
    ),
    ("batch-zero-items", _frame(_body(5, rest=b"\x00\x00")), False, ErrorCode.BAD_REQUEST, "bad_count"),
    ("batch-1001", _frame(_body(5, rest=struct.pack(">H", 1001))), False, ErrorCode.BAD_REQUEST, "bad_count"),
    ("count-missing", _frame(_body(2)), False, ErrorCode.BAD_REQUEST, "truncated"),
    ("item-missing", _frame(_body(2, rest=ONE)), False, ErrorCode.BAD_REQUEST, "truncated"),
    (
        "data-past-end",
        _frame(_body(2, rest=ONE + _item()[:-1][:-4] + struct.pack(">I", 50) + b"x")),
        False,
        ErrorCode.BAD_REQUEST,
        "truncated",
    ),
    (
        "item-trailing",
        _frame(_body(2, rest=ONE + _item() + b"z")),
        False,
        ErrorCode.BAD_REQUEST,
        "trailing_bytes",
    ),
    ("retire-zero", _frame(_body(18, rest=b"\x00\x00\x00\x00")), False, ErrorCode.BAD_REQUEST, "bad_version"),
    ("retire-short", _frame(_body(18, rest=b"\x00\x01")), False, ErrorCode.BAD_REQUEST, "truncated"),
    (
        "retire-too-new",
        _frame(_body(18, rest=b"\x00\x00\x00\x09")),
        False,
        ErrorCode.BAD_REQUEST,
        "bad_version",
    ),
]


@pytest.mark.parametrize(
    ("name", "raw", "half_close", "code", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_frame_gets_its_refusal(
    running: Running, name: str, raw: bytes, half_close: bool, code: ErrorCode, reason: str
) -> None:
    body = _exchange(running.keyd.socket, raw, half_close=half_close)
    assert body is not None, f"{name}: keyd hung up without an answer"
    assert parse_response(body) == ErrorResponse(code, reason)
    # ...and keyd still serves everyone else.
    with running.keyd.client() as c:
        assert c.status().sealed is False


# Item-level refusals: the frame parses, the one item fails with its own reason.
BAD_ITEMS = [
    ("record-empty", _item(record=b""), "bad_record_id"),
    ("record-slash-start", _item(record=b"/etc"), "bad_record_id"),
    ("record-space", _item(record=b"r 1"), "bad_record_id"),
    ("field-dot-start", _item(field=b".pan"), "bad_field"),
    ("field-colon", _item(field=b"pan:x"), "bad_field"),
    ("plaintext-too-large", _item(data=b"x" * 16385), "too_large"),
]


@pytest.mark.parametrize(("name", "item", "reason"), BAD_ITEMS, ids=[b[0] for b in BAD_ITEMS])
def test_bad_item_gets_its_refusal(running: Running, name: str, item: bytes, reason: str) -> None:
    body = _exchange(running.keyd.socket, _frame(_body(5, rest=b"\x00\x02" + _item() + item)))
    assert body is not None
    ok, bad = parse_response(body)  # type: ignore[misc]
    assert isinstance(ok, bytes)
    assert bad == ErrorResponse(ErrorCode.BAD_REQUEST, reason)


def test_connection_survives_a_bad_body(running: Running) -> None:
    """A frame that parses as a frame but not as a request does not cost the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(running.keyd.socket))
        for _ in range(3):
            s.sendall(_frame(_body(99)) + encode_request(Op.STATUS, "a", "b"))
            first = s.recv(4)
            s.recv(struct.unpack(">I", first)[0])
            head = s.recv(4)
            assert parse_response(s.recv(struct.unpack(">I", head)[0]))["sealed"] is False  # type: ignore[index]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=1, max_size=300))
def test_fuzzed_bodies_never_break_keyd(running: Running, body: bytes) -> None:
    assume(body[:2] not in (b"\x01\x10", b"\x01\x11", b"\x01\x12"))  # seal/rotate/retire the shared keyd
    answer = _exchange(running.keyd.socket, _frame(body))
    assert answer is not None
    parsed = parse_response(answer)
    if isinstance(parsed, ErrorResponse):
        assert parsed.code in (ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.SEALED)


def _as_other_user(path: os.PathLike[str], *, groups: list[int]) -> str:
    """Fork a child that becomes uid 65534 (with `groups`) and calls keyd; return what it saw."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        try:
            os.setgroups(groups)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                with KeydClient(path, timeout=3) as c:
                    c.encrypt(b"x", context=Context("r", "f"), actor="mallory", purpose="steal")
                result = "served"
            except Forbidden as exc:
                result = f"forbidden:{exc.reason}"
            except Unavailable:
                result = "unavailable"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent through the pipe
            result = f"error:{exc!r}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        result = f.read()
    os.waitpid(pid, 0)
    return result


def test_disallowed_uid_is_refused_and_logged(running: Running) -> None:
    gid = os.stat(running.keyd.socket.parent).st_gid  # in the socket dir's group, but not an allowed uid
    assert _as_other_user(running.keyd.socket, groups=[gid]) == "forbidden:peer_not_allowed"
    refused = [e for e in running.keyd.events() if e["event"] == "peer_refused"]
    assert refused
    assert refused[-1]["uid"] == NOBODY
    with running.keyd.client() as c:
        assert c.status().sealed is False


def test_outsiders_cannot_enter_the_socket_dir(running: Running) -> None:
    sock_dir = running.keyd.socket.parent
    assert oct(os.stat(sock_dir).st_mode & 0o7777) == "0o750"
    assert oct(os.stat(running.keyd.socket).st_mode & 0o777) == "0o660"
    assert _as_other_user(running.keyd.socket, groups=[]) == "unavailable"
