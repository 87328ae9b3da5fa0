"""The response body: encoded by keyd, parsed by the client (parse_response).

Body::

    u8 protocol version, u8 status (0 = ok, else an error code number, CODE_NUMBERS)
    error:   u8 reason length, reason (ASCII token from Reason)
    ok:      u8 kind
             kind 1 (items): u16 count, per item: u8 status; ok -> u32 len, data; error -> u8 len, reason
             kind 2 (json):  the rest of the body is a compact JSON object (status and admin answers)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from keyd.errors import ErrorCode
from keyd.protocol import CACHE_MAX, CODE_NUMBERS, CODES_BY_NUMBER, PROTOCOL_VERSION, U16, U32, Reason, frame

KIND_ITEMS = 1
KIND_JSON = 2
_REASONS = {r.value.encode("ascii"): r for r in Reason}

# An item's outcome: the output bytes, or (code, reason).
Outcome = bytes | tuple[ErrorCode, Reason]

# --- keyd's side: encode ----------------------------------------------------------------------------


def encode_error(code: ErrorCode, reason: Reason) -> bytes:
    r = reason.value.encode("ascii")
    return frame(bytes((PROTOCOL_VERSION, CODE_NUMBERS[code], len(r))) + r)


def encode_items(outcomes: list[Outcome]) -> bytes:
    parts = [bytes((PROTOCOL_VERSION, 0, KIND_ITEMS)), U16.pack(len(outcomes))]
    add = parts.append
    heads = _OK_HEADS
    for out in outcomes:
        if isinstance(out, bytes):
            head = heads.get(len(out))
            if head is None:
                head = b"\x00" + U32.pack(len(out))
                if len(heads) < CACHE_MAX:
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


_ONE_OK = bytes((PROTOCOL_VERSION, 0, KIND_ITEMS)) + U16.pack(1) + b"\x00"


def encode_one(data: bytes) -> bytes:
    """The answer to a single op that succeeded: what encode_items([data]) gives, built directly."""
    return b"".join((U32.pack(len(data) + 10), _ONE_OK, U32.pack(len(data)), data))


def encode_json(obj: dict[str, Any]) -> bytes:
    return frame(bytes((PROTOCOL_VERSION, 0, KIND_JSON)) + json.dumps(obj, separators=(",", ":")).encode())


# --- the client's side: parse, strictly -------------------------------------------------------------


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
    if body.startswith(_ONE_OK) and len(body) >= 10 and U32.unpack_from(body, 6)[0] == len(body) - 10:
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
        (count,) = U16.unpack_from(body, 3)
        pos = 5
        size = len(body)
        u32 = U32.unpack_from
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
