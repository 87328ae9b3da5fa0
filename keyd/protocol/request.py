"""The request body: parsed and validated by keyd (parse_request), encoded by the client.

Body::

    u8  protocol version (1)
    u8  op (see Op)
    u8  actor length, actor bytes        (ACTOR_RE)
    u8  purpose length, purpose bytes    (PURPOSE_RE)
    then, for the crypto ops:
        u16 item count (exactly 1 for the single forms, 1..MAX_ITEMS for batches)
        per item: u8 len, record id (RECORD_RE); u8 len, field (FIELD_RE); u32 len, data
    for RETIRE: u32 minimum decrypt version
    for REKEY: u8 kind (1 passphrase, 2 raw, 3 pin), u8 log2 of scrypt N (14..20 for a passphrase,
        else 0), u8 length, token label (FIELD_RE for a pin, else empty)
    for the other ops: nothing

The client's encoders refuse what keyd's parser would, before anything is sent; the two must agree
byte for byte (tests/keyd/test_protocol.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from keyd.envelope import MAX_CIPHERTEXT, MAX_PLAINTEXT
from keyd.protocol import (
    ACTOR_RE,
    BATCH_OPS,
    CACHE_MAX,
    CRYPTO_OPS,
    FIELD_RE,
    LENGTH_BYTES,
    MAX_FRAME,
    MAX_ITEMS,
    PLAINTEXT_OPS,
    PROTOCOL_VERSION,
    PURPOSE_RE,
    RECORD_RE,
    U16,
    U32,
    Op,
    ProtocolError,
    Reason,
    all_records_ok,
)


def clip_ciphertext(data: bytes) -> bytes:
    """A stored value as the client sends it for a decrypt or rewrap.

    A value longer than any ciphertext keyd makes is damage like any other, and keyd is the one to
    refuse it and record the integrity failure: the client sends only one byte more than the limit,
    enough for keyd to see that it is too long, and never a frame the size of whatever was stored.
    """
    return data[: MAX_CIPHERTEXT + 1] if len(data) > MAX_CIPHERTEXT else data


_OPS = {int(op): op for op in Op}

# --- keyd's side: parse and validate --------------------------------------------------------------


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
    rekey: RekeyArgs | None = None


class RekeyArgs(NamedTuple):
    kind: str  # one of REKEY_KINDS
    scrypt_log_n: int
    token_label: str


REKEY_KINDS = ("passphrase", "raw", "pin")  # their wire numbers are 1, 2, 3


# Actors, purposes and field names repeat request after request: remember the ones that passed.
_SEEN_ACTORS: dict[bytes, str] = {}
_SEEN_PURPOSES: dict[bytes, str] = {}
_SEEN_FIELDS: set[bytes] = set()


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
        if len(seen) >= CACHE_MAX:
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
        (count,) = U16.unpack_from(body, pos)
        pos += 2
        if op in BATCH_OPS:
            if not 1 <= count <= MAX_ITEMS:
                raise ProtocolError(Reason.BAD_COUNT)
        elif count != 1:
            raise ProtocolError(Reason.BAD_COUNT)
        limit = MAX_PLAINTEXT if op in PLAINTEXT_OPS else MAX_CIPHERTEXT
        field_ok = FIELD_RE.fullmatch
        seen_fields = _SEEN_FIELDS
        u32 = U32.unpack_from
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
                    elif len(seen_fields) < CACHE_MAX:
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
        (arg,) = U32.unpack_from(body, pos)
        pos += 4
        if arg < 1:
            raise ProtocolError(Reason.BAD_VERSION)
    elif op is Op.REKEY:
        rekey, pos = _parse_rekey(body, pos)
        if pos != size:
            raise ProtocolError(Reason.TRAILING_BYTES)
        return Request(op, actor, purpose, items, None, 0, rekey)
    if pos != size:
        raise ProtocolError(Reason.TRAILING_BYTES)
    return Request(op, actor, purpose, items, arg, failed)


def _parse_rekey(body: bytes, pos: int) -> tuple[RekeyArgs, int]:
    if pos + 3 > len(body):
        raise ProtocolError(Reason.TRUNCATED)
    kind, log_n, n = body[pos], body[pos + 1], body[pos + 2]
    end = pos + 3 + n
    if end > len(body):
        raise ProtocolError(Reason.TRUNCATED)
    label = body[pos + 3 : end]
    if not 1 <= kind <= len(REKEY_KINDS):
        raise ProtocolError(Reason.BAD_REKEY)
    name = REKEY_KINDS[kind - 1]
    # Exactly one encoding: the cost only with a passphrase, the label only with a pin.
    if (name == "passphrase") != (14 <= log_n <= 20) or (name != "passphrase" and log_n):
        raise ProtocolError(Reason.BAD_REKEY)
    if (name == "pin") != bool(label) or (label and FIELD_RE.fullmatch(label) is None):
        raise ProtocolError(Reason.BAD_REKEY)
    return RekeyArgs(name, log_n, label.decode("ascii")), end


# --- the client's side: encode, refusing what keyd would ----------------------------------------------


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
    pack = U32.pack
    lens = LENGTH_BYTES
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
    parts[1] = U16.pack(sent)
    body = b"".join(parts)
    if len(body) > MAX_FRAME:
        raise ProtocolError(Reason.FRAME_TOO_LARGE)
    return U32.pack(len(body)) + body


def _encode_batch_checked(
    op: Op, actor: str, purpose: str, items: Sequence[tuple[HasContext, bytes]]
) -> tuple[bytes | None, list[Reason | None]]:
    """encode_batch for a batch with items that fail: each item checked on its own."""
    limit = MAX_PLAINTEXT if op in PLAINTEXT_OPS else MAX_CIPHERTEXT
    parts = [_prefix(op, actor, purpose), b""]
    errors: list[Reason | None] = []
    record_ok = RECORD_RE.fullmatch
    pack = U32.pack
    lens = LENGTH_BYTES
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


_FIELD_BYTES: dict[str, bytes] = {}


def _field_bytes(field: str) -> bytes | None:
    f = _FIELD_BYTES.get(field) if isinstance(field, str) else None
    if f is None:
        raw = field.encode("ascii", "replace") if isinstance(field, str) else b""
        if FIELD_RE.fullmatch(raw) is None:
            return None
        if len(_FIELD_BYTES) < CACHE_MAX:
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
    rekey: RekeyArgs | None = None,
) -> bytes:
    """One request frame (length prefix included). Validates on the way out, like the server will."""
    if not isinstance(actor, str) or not isinstance(purpose, str):
        raise ProtocolError(Reason.BAD_ACTOR if not isinstance(actor, str) else Reason.BAD_PURPOSE)
    parts = [_prefix(op, actor, purpose)]
    if op in CRYPTO_OPS:
        if items is None:
            raise ProtocolError(Reason.BAD_COUNT)
        parts.append(U16.pack(len(items)))
        pack = U32.pack
        for record_id, field, data in items:
            if op not in PLAINTEXT_OPS:
                data = clip_ciphertext(data)
            r = _check_ident(record_id, RECORD_RE, Reason.BAD_RECORD_ID)
            f = _check_ident(field, FIELD_RE, Reason.BAD_FIELD)
            parts += [bytes((len(r),)), r, bytes((len(f),)), f, pack(len(data)), data]
    elif op is Op.RETIRE:
        if arg is None:
            raise ProtocolError(Reason.BAD_VERSION)
        parts.append(U32.pack(arg))
    elif op is Op.REKEY:
        if rekey is None or rekey.kind not in REKEY_KINDS:
            raise ProtocolError(Reason.BAD_REKEY)
        label = rekey.token_label.encode("ascii", "replace")
        if len(label) > 64 or not 0 <= rekey.scrypt_log_n <= 20:
            raise ProtocolError(Reason.BAD_REKEY)
        parts.append(bytes((REKEY_KINDS.index(rekey.kind) + 1, rekey.scrypt_log_n, len(label))) + label)
        _parse_rekey(parts[-1], 0)  # refuse here what keyd would refuse
    body = b"".join(parts)
    if len(body) > MAX_FRAME:
        raise ProtocolError(Reason.FRAME_TOO_LARGE)
    return U32.pack(len(body)) + body


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
            U32.pack(size),
            prefix,
            b"\x00\x01",
            LENGTH_BYTES[len(r)],
            r,
            LENGTH_BYTES[len(f)],
            f,
            U32.pack(len(data)),
            data,
        )
    )
