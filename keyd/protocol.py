"""keyd's wire protocol: frames, the request schema, the response envelope. Shared with the client.

Why binary and not JSON: a field round trip must cost well under 25 µs end to end, and JSON plus
base64 on both sides is a measurable share of that. The format below is parsed with a handful of
slices and one regex per identifier, and it is strict: every length is bounded, every identifier
matches a fixed alphabet, nothing may trail the last item, and there is exactly one way to encode a
given request (no optional fields, no padding, no alternative spellings).

Frame (both directions): ``u32 big-endian body length`` then the body. ``0 < length <= MAX_FRAME``.

Request body::

    u8  protocol version (1)
    u8  op (see Op)
    u8  actor length, actor bytes        (ACTOR_RE)
    u8  purpose length, purpose bytes    (PURPOSE_RE)
    then, for the crypto ops:
        u16 item count (exactly 1 for the single forms, 1..MAX_ITEMS for batches)
        per item: u8 len, record id (RECORD_RE); u8 len, field (FIELD_RE); u32 len, data
    for RETIRE: u32 minimum decrypt version
    for the other ops: nothing

Response body::

    u8 protocol version, u8 status (0 = ok, else an error code number)
    error:   u8 reason length, reason (ASCII token from Reason)
    ok:      u8 kind
             kind 1 (items): u16 count, per item: u8 status; ok -> u32 len, data; error -> u8 len, reason
             kind 2 (json):  the rest of the body is a compact JSON object (status and admin answers)

Only whole-request problems (a frame that does not parse, sealed, forbidden peer) use the error
envelope; a problem with one item of a batch fails that item alone.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple, Protocol

from keyd.errors import BadRequest, ErrorCode

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB: a batch of MAX_ITEMS card fields fits many times over
MAX_ITEMS = 1000
MAX_PLAINTEXT = 16 * 1024  # a field is a card number, a note, a secret: never a document
# A ciphertext is 5 header bytes + 12 nonce + plaintext + 16 tag (see keyd/cipher.py).
MAX_CIPHERTEXT = MAX_PLAINTEXT + 33

# Identifiers end up in logs, events and associated data: a closed ASCII alphabet keeps control
# characters, newlines and look-alike Unicode out of all three.
ACTOR_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
PURPOSE_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
_RECORD = rb"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}"
RECORD_RE = re.compile(_RECORD)
FIELD_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Every record id of a batch in one regex pass (a third of the cost of one fullmatch per id): the ids
# joined by "\n", which is outside the alphabet. See all_records_ok.
_RECORDS_RE = re.compile(rb"(?:" + _RECORD + rb"\n)*" + _RECORD)


def all_records_ok(records: list[bytes]) -> bool:
    """True iff every id matches RECORD_RE (`records` is not empty). False says some id does not.

    The separator count proves that no id contains "\n" itself, so the pieces the regex matches are
    exactly the ids; a False is followed by the per-id check, which decides which ones fail.
    """
    if len(records) == 1:
        return RECORD_RE.fullmatch(records[0]) is not None
    joined = b"\n".join(records)
    return joined.count(b"\n") == len(records) - 1 and _RECORDS_RE.fullmatch(joined) is not None


_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class Op(IntEnum):
    STATUS = 1
    ENCRYPT = 2
    DECRYPT = 3
    REWRAP = 4
    ENCRYPT_BATCH = 5
    DECRYPT_BATCH = 6
    REWRAP_BATCH = 7
    # Operator commands: only uids in the admin list may send these.
    SEAL = 16
    ROTATE = 17
    RETIRE = 18


CRYPTO_OPS = frozenset(
    {Op.ENCRYPT, Op.DECRYPT, Op.REWRAP, Op.ENCRYPT_BATCH, Op.DECRYPT_BATCH, Op.REWRAP_BATCH}
)
BATCH_OPS = frozenset({Op.ENCRYPT_BATCH, Op.DECRYPT_BATCH, Op.REWRAP_BATCH})
ADMIN_OPS = frozenset({Op.SEAL, Op.ROTATE, Op.RETIRE})
PLAINTEXT_OPS = frozenset({Op.ENCRYPT, Op.ENCRYPT_BATCH})  # the ops whose items carry plaintext


def clip_ciphertext(data: bytes) -> bytes:
    """A stored value as the client sends it for a decrypt or rewrap.

    A value longer than any ciphertext keyd makes is damage like any other, and keyd is the one to
    refuse it and record the integrity failure: the client sends only one byte more than the limit,
    enough for keyd to see that it is too long, and never a frame the size of whatever was stored.
    """
    return data[: MAX_CIPHERTEXT + 1] if len(data) > MAX_CIPHERTEXT else data


_OPS = {int(op): op for op in Op}


class Reason(StrEnum):
    """Stable machine-readable reasons carried next to the error code. Never free text."""

    # framing and schema (bad_request)
    EMPTY_FRAME = "empty_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    TRUNCATED = "truncated"
    TRAILING_BYTES = "trailing_bytes"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_OP = "unknown_op"
    BAD_ACTOR = "bad_actor"
    BAD_PURPOSE = "bad_purpose"
    BAD_COUNT = "bad_count"
    BAD_RECORD_ID = "bad_record_id"
    BAD_FIELD = "bad_field"
    TOO_LARGE = "too_large"
    BAD_VERSION = "bad_version"
    # state
    SEALED = "sealed"
    # authorisation (forbidden)
    PEER_NOT_ALLOWED = "peer_not_allowed"
    NOT_ADMIN = "not_admin"
    KEY_EXHAUSTED = "key_version_exhausted"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    # budgets (quota_exceeded)
    EMPLOYEE_MINUTE = "employee_minute"
    EMPLOYEE_HOUR = "employee_hour"
    EMPLOYEE_DAY = "employee_day"
    GLOBAL_MINUTE = "global_minute"
    GLOBAL_HOUR = "global_hour"
    GLOBAL_DAY = "global_day"
    # integrity_failure: the stored value cannot be opened (too_large above, for a decrypt or rewrap)
    AUTHENTICATION_FAILED = "authentication_failed"
    BAD_CIPHERTEXT = "bad_ciphertext"
    UNKNOWN_KEY_VERSION = "unknown_key_version"
    RETIRED_VERSION = "retired_version"
    # internal
    INTERNAL = "internal"
    STATE_WRITE_FAILED = "state_write_failed"


CODE_NUMBERS: dict[ErrorCode, int] = {
    ErrorCode.SEALED: 1,
    ErrorCode.QUOTA_EXCEEDED: 2,
    ErrorCode.BAD_REQUEST: 3,
    ErrorCode.INTEGRITY_FAILURE: 4,
    ErrorCode.FORBIDDEN: 5,
    ErrorCode.INTERNAL: 6,
}
CODES_BY_NUMBER: dict[int, ErrorCode] = {n: c for c, n in CODE_NUMBERS.items()}
_REASONS = {r.value.encode("ascii"): r for r in Reason}

KIND_ITEMS = 1
KIND_JSON = 2


class ProtocolError(BadRequest):
    """A request that does not parse or validate. Carries the stable reason sent on the wire."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.refusal = reason
        self.reason = reason.value


# One unit of work: (record id, field, data, error). `error` is set when this item alone failed
# validation. A plain tuple, not a class: a batch builds a thousand of them per request.
Item = tuple[bytes, bytes, bytes, "Reason | None"]


class Request(NamedTuple):
    # A NamedTuple, not a frozen dataclass: construction is on the per-request hot path.
    op: Op
    actor: str
    purpose: str
    items: list[Item]
    arg: int | None = None
    failed: int = 0  # how many items carry an error


# An item's outcome: the output bytes, or (code, reason).
Outcome = bytes | tuple[ErrorCode, Reason]


# Actors, purposes and field names repeat request after request: remember the ones that passed.
_SEEN_ACTORS: dict[bytes, str] = {}
_SEEN_PURPOSES: dict[bytes, str] = {}
_SEEN_FIELDS: set[bytes] = set()
_SEEN_MAX = 4096


def _ident(
    body: bytes, pos: int, pattern: re.Pattern[bytes], reason: Reason, seen: dict[bytes, str]
) -> tuple[str, int]:
    if pos >= len(body):
        raise ProtocolError(Reason.TRUNCATED)
    end = pos + 1 + body[pos]
    if end > len(body):
        raise ProtocolError(Reason.TRUNCATED)
    value = body[pos + 1 : end]
    text = seen.get(value)
    if text is None:
        if pattern.fullmatch(value) is None:
            raise ProtocolError(reason)
        text = value.decode("ascii")
        if len(seen) >= _SEEN_MAX:
            seen.clear()
        seen[value] = text
    return text, end


def parse_request(body: bytes) -> Request:
    """Parse and validate one request body. Raises ProtocolError with the exact reason."""
    size = len(body)
    if size < 2:
        raise ProtocolError(Reason.TRUNCATED)
    if body[0] != PROTOCOL_VERSION:
        raise ProtocolError(Reason.UNSUPPORTED_VERSION)
    op = _OPS.get(body[1])
    if op is None:
        raise ProtocolError(Reason.UNKNOWN_OP)
    actor, pos = _ident(body, 2, ACTOR_RE, Reason.BAD_ACTOR, _SEEN_ACTORS)
    purpose, pos = _ident(body, pos, PURPOSE_RE, Reason.BAD_PURPOSE, _SEEN_PURPOSES)
    items: list[Item] = []
    arg: int | None = None
    failed = 0
    if op in CRYPTO_OPS:
        if pos + 2 > size:
            raise ProtocolError(Reason.TRUNCATED)
        (count,) = _U16.unpack_from(body, pos)
        pos += 2
        if op in BATCH_OPS:
            if not 1 <= count <= MAX_ITEMS:
                raise ProtocolError(Reason.BAD_COUNT)
        elif count != 1:
            raise ProtocolError(Reason.BAD_COUNT)
        limit = MAX_PLAINTEXT if op in PLAINTEXT_OPS else MAX_CIPHERTEXT
        field_ok = FIELD_RE.fullmatch
        seen_fields = _SEEN_FIELDS
        u32 = _U32.unpack_from
        records: list[bytes] = []
        add_record = records.append
        append = items.append
        failed = 0
        for _ in range(count):
            # Structure errors (lengths) break the whole frame; content errors fail one item.
            if pos >= size:
                raise ProtocolError(Reason.TRUNCATED)
            end = pos + 1 + body[pos]
            if end >= size:
                raise ProtocolError(Reason.TRUNCATED)
            record_id = body[pos + 1 : end]
            pos = end + 1 + body[end]
            if pos + 4 > size:
                raise ProtocolError(Reason.TRUNCATED)
            field = body[end + 1 : pos]
            (dlen,) = u32(body, pos)
            pos += 4
            end = pos + dlen
            if end > size:
                raise ProtocolError(Reason.TRUNCATED)
            add_record(record_id)
            # Record ids are checked below, all at once; a bad one takes precedence over these.
            if field in seen_fields and dlen <= limit:
                append((record_id, field, body[pos:end], None))
            else:
                error: Reason | None = None
                if field not in seen_fields:
                    if field_ok(field) is None:
                        error = Reason.BAD_FIELD
                    elif len(seen_fields) < _SEEN_MAX:
                        seen_fields.add(field)
                if dlen > limit and error is None:
                    error = Reason.TOO_LARGE
                if error is not None:
                    failed += 1
                append((record_id, field, body[pos:end], error))
            pos = end
        if not all_records_ok(records):
            record_ok = RECORD_RE.fullmatch
            for i, record_id in enumerate(records):
                if record_ok(record_id) is None:
                    failed += items[i][3] is None
                    items[i] = (record_id, items[i][1], items[i][2], Reason.BAD_RECORD_ID)
    elif op is Op.RETIRE:
        if pos + 4 > size:
            raise ProtocolError(Reason.TRUNCATED)
        (arg,) = _U32.unpack_from(body, pos)
        pos += 4
        if arg < 1:
            raise ProtocolError(Reason.BAD_VERSION)
    if pos != size:
        raise ProtocolError(Reason.TRAILING_BYTES)
    return Request(op, actor, purpose, items, arg, failed)


def _check_ident(value: str, pattern: re.Pattern[bytes], reason: Reason) -> bytes:
    raw = value.encode("ascii", "replace") if isinstance(value, str) else b""
    if pattern.fullmatch(raw) is None:
        raise ProtocolError(reason)
    return raw


class HasContext(Protocol):
    """What keyd.client.Context looks like, without importing the client here."""

    @property
    def record_id(self) -> str: ...

    @property
    def field(self) -> str: ...


def encode_batch(
    op: Op, actor: str, purpose: str, items: Sequence[tuple[HasContext, bytes]]
) -> tuple[bytes | None, list[Reason | None]]:
    """A batch frame of the items the server would accept, and per item the reason it was left out.

    For the client: an item that would fail fails here, alone, and is not sent. The usual batch has
    no such item and is encoded in one pass, its record ids checked all at once; a batch with one is
    encoded again, item by item (_encode_batch_checked).
    """
    if not isinstance(actor, str) or not isinstance(purpose, str):
        raise ProtocolError(Reason.BAD_ACTOR if not isinstance(actor, str) else Reason.BAD_PURPOSE)
    if not isinstance(items, list | tuple):
        items = list(items)  # the checked pass may need a second look at every item
    parts = [_prefix(op, actor, purpose), b""]
    limit = MAX_PLAINTEXT if op in PLAINTEXT_OPS else MAX_CIPHERTEXT
    fields = _FIELD_BYTES
    records: list[bytes] = []
    add_record = records.append
    add = parts.append
    pack = _U32.pack
    lens = _LENGTH_BYTES
    for context, data in items:
        record_id = context.record_id
        r = record_id.encode("ascii", "replace") if isinstance(record_id, str) else b""
        field = context.field
        f = fields.get(field) if type(field) is str else None
        if f is None:
            f = _field_bytes(field)
        if type(data) is not bytes:
            data = bytes(data)
        if len(data) > limit and op not in PLAINTEXT_OPS:
            data = clip_ciphertext(data)  # keyd refuses it, as an integrity failure
        elif len(data) > limit:
            return _encode_batch_checked(op, actor, purpose, items)
        if f is None or len(r) > 255:
            return _encode_batch_checked(op, actor, purpose, items)
        add_record(r)
        add(lens[len(r)])
        add(r)
        add(lens[len(f)])
        add(f)
        add(pack(len(data)))
        add(data)
    if not records:
        return None, []
    if not all_records_ok(records):
        return _encode_batch_checked(op, actor, purpose, items)
    return _batch_frame(parts, len(records)), [None] * len(records)


def _batch_frame(parts: list[bytes], sent: int) -> bytes:
    if sent > MAX_ITEMS:
        raise ProtocolError(Reason.BAD_COUNT)
    parts[1] = _U16.pack(sent)
    body = b"".join(parts)
    if len(body) > MAX_FRAME:
        raise ProtocolError(Reason.FRAME_TOO_LARGE)
    return _U32.pack(len(body)) + body


def _encode_batch_checked(
    op: Op, actor: str, purpose: str, items: Sequence[tuple[HasContext, bytes]]
) -> tuple[bytes | None, list[Reason | None]]:
    """encode_batch for a batch with items that fail: each item checked on its own."""
    limit = MAX_PLAINTEXT if op in PLAINTEXT_OPS else MAX_CIPHERTEXT
    parts = [_prefix(op, actor, purpose), b""]
    errors: list[Reason | None] = []
    record_ok = RECORD_RE.fullmatch
    pack = _U32.pack
    lens = _LENGTH_BYTES
    sent = 0
    for context, data in items:
        record_id = context.record_id
        r = record_id.encode("ascii", "replace") if isinstance(record_id, str) else b""
        f = _field_bytes(context.field)
        if type(data) is not bytes:
            data = bytes(data)
        if op not in PLAINTEXT_OPS:
            data = clip_ciphertext(data)
        if record_ok(r) is None:
            errors.append(Reason.BAD_RECORD_ID)
        elif f is None:
            errors.append(Reason.BAD_FIELD)
        elif len(data) > limit:
            errors.append(Reason.TOO_LARGE)
        else:
            errors.append(None)
            parts += [lens[len(r)], r, lens[len(f)], f, pack(len(data)), data]
            sent += 1
    if not sent:
        return None, errors
    return _batch_frame(parts, sent), errors


_LENGTH_BYTES = [bytes((i,)) for i in range(256)]
_FIELD_BYTES: dict[str, bytes] = {}


def _field_bytes(field: str) -> bytes | None:
    f = _FIELD_BYTES.get(field) if isinstance(field, str) else None
    if f is None:
        raw = field.encode("ascii", "replace") if isinstance(field, str) else b""
        if FIELD_RE.fullmatch(raw) is None:
            return None
        if len(_FIELD_BYTES) < _SEEN_MAX:
            _FIELD_BYTES[field] = raw
        f = raw
    return f


@functools.lru_cache(maxsize=256)
def _prefix(op: Op, actor: str, purpose: str) -> bytes:
    # The same employee and purpose repeat request after request: validate and encode them once.
    a = _check_ident(actor, ACTOR_RE, Reason.BAD_ACTOR)
    p = _check_ident(purpose, PURPOSE_RE, Reason.BAD_PURPOSE)
    return b"".join((bytes((PROTOCOL_VERSION, op, len(a))), a, bytes((len(p),)), p))


def encode_request(
    op: Op,
    actor: str,
    purpose: str,
    items: list[tuple[str, str, bytes]] | None = None,
    arg: int | None = None,
) -> bytes:
    """One request frame (length prefix included). Validates on the way out, like the server will."""
    if not isinstance(actor, str) or not isinstance(purpose, str):
        raise ProtocolError(Reason.BAD_ACTOR if not isinstance(actor, str) else Reason.BAD_PURPOSE)
    parts = [_prefix(op, actor, purpose)]
    if op in CRYPTO_OPS:
        if items is None:
            raise ProtocolError(Reason.BAD_COUNT)
        parts.append(_U16.pack(len(items)))
        pack = _U32.pack
        for record_id, field, data in items:
            if op not in PLAINTEXT_OPS:
                data = clip_ciphertext(data)
            r = _check_ident(record_id, RECORD_RE, Reason.BAD_RECORD_ID)
            f = _check_ident(field, FIELD_RE, Reason.BAD_FIELD)
            parts += [bytes((len(r),)), r, bytes((len(f),)), f, pack(len(data)), data]
    elif op is Op.RETIRE:
        if arg is None:
            raise ProtocolError(Reason.BAD_VERSION)
        parts.append(_U32.pack(arg))
    body = b"".join(parts)
    if len(body) > MAX_FRAME:
        raise ProtocolError(Reason.FRAME_TOO_LARGE)
    return _U32.pack(len(body)) + body


def frame(body: bytes) -> bytes:
    return _U32.pack(len(body)) + body


def encode_error(code: ErrorCode, reason: Reason) -> bytes:
    r = reason.value.encode("ascii")
    return frame(bytes((PROTOCOL_VERSION, CODE_NUMBERS[code], len(r))) + r)


def encode_items(outcomes: list[Outcome]) -> bytes:
    parts = [bytes((PROTOCOL_VERSION, 0, KIND_ITEMS)), _U16.pack(len(outcomes))]
    add = parts.append
    heads = _OK_HEADS
    for out in outcomes:
        if isinstance(out, bytes):
            head = heads.get(len(out))
            if head is None:
                head = b"\x00" + _U32.pack(len(out))
                if len(heads) < _SEEN_MAX:
                    heads[len(out)] = head
            add(head)
            add(out)
        else:
            code, reason = out
            r = reason.value.encode("ascii")
            add(bytes((CODE_NUMBERS[code], len(r))))
            add(r)
    return frame(b"".join(parts))


# b"\x00" + u32 length: the head of an ok item, per length (the lengths of a batch repeat).
_OK_HEADS: dict[int, bytes] = {}


_ONE_OK = bytes((PROTOCOL_VERSION, 0, KIND_ITEMS)) + _U16.pack(1) + b"\x00"


def encode_one(data: bytes) -> bytes:
    """The answer to a single op that succeeded: what encode_items([data]) gives, built directly."""
    return b"".join((_U32.pack(len(data) + 10), _ONE_OK, _U32.pack(len(data)), data))


def encode_single(op: Op, actor: str, purpose: str, record_id: str, field: str, data: bytes) -> bytes:
    """The request frame of a single-item op (the client's hot path; same bytes as encode_request)."""
    if not isinstance(actor, str) or not isinstance(purpose, str):
        raise ProtocolError(Reason.BAD_ACTOR if not isinstance(actor, str) else Reason.BAD_PURPOSE)
    r = _check_ident(record_id, RECORD_RE, Reason.BAD_RECORD_ID)
    f = _field_bytes(field)
    if f is None:
        raise ProtocolError(Reason.BAD_FIELD)
    if op not in PLAINTEXT_OPS:
        data = clip_ciphertext(data)
    prefix = _prefix(op, actor, purpose)
    size = len(prefix) + len(r) + len(f) + len(data) + 8
    if size > MAX_FRAME:
        raise ProtocolError(Reason.FRAME_TOO_LARGE)
    return b"".join(
        (
            _U32.pack(size),
            prefix,
            b"\x00\x01",
            _LENGTH_BYTES[len(r)],
            r,
            _LENGTH_BYTES[len(f)],
            f,
            _U32.pack(len(data)),
            data,
        )
    )


def encode_json(obj: dict[str, Any]) -> bytes:
    return frame(bytes((PROTOCOL_VERSION, 0, KIND_JSON)) + json.dumps(obj, separators=(",", ":")).encode())


class ResponseError(Exception):
    """A response from keyd that does not parse: the connection is out of step and must be dropped."""


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    code: ErrorCode
    reason: str


def _reason(raw: bytes) -> str:
    reason = _REASONS.get(raw)
    if reason is None:
        raise ResponseError("unknown reason")
    return reason.value


def parse_response(body: bytes) -> ErrorResponse | list[bytes | ErrorResponse] | dict[str, Any]:
    """Parse a response body (client side). Raises ResponseError on anything malformed."""
    if body.startswith(_ONE_OK) and len(body) >= 10 and _U32.unpack_from(body, 6)[0] == len(body) - 10:
        return [body[10:]]  # the common answer: one item, ok
    try:
        if len(body) < 3 or body[0] != PROTOCOL_VERSION:
            raise ResponseError("bad header")
        status = body[1]
        if status:
            code = CODES_BY_NUMBER.get(status)
            if code is None or 3 + body[2] != len(body):
                raise ResponseError("bad error envelope")
            return ErrorResponse(code, _reason(body[3:]))
        kind = body[2]
        if kind == KIND_JSON:
            obj = json.loads(body[3:])
            if not isinstance(obj, dict):
                raise ResponseError("bad json answer")
            return obj
        if kind != KIND_ITEMS:
            raise ResponseError("bad kind")
        (count,) = _U16.unpack_from(body, 3)
        pos = 5
        size = len(body)
        u32 = _U32.unpack_from
        out: list[bytes | ErrorResponse] = []
        append = out.append
        for _ in range(count):
            st = body[pos]
            if st == 0:
                start = pos + 5
                pos = start + u32(body, pos + 1)[0]
                if pos > size:
                    raise ResponseError("truncated item")
                append(body[start:pos])
            else:
                code = CODES_BY_NUMBER.get(st)
                n = body[pos + 1]
                if code is None or pos + 2 + n > len(body):
                    raise ResponseError("bad item error")
                out.append(ErrorResponse(code, _reason(body[pos + 2 : pos + 2 + n])))
                pos += 2 + n
        if pos != len(body):
            raise ResponseError("trailing bytes")
        return out
    except (IndexError, struct.error, ValueError) as exc:
        raise ResponseError("malformed response") from exc
