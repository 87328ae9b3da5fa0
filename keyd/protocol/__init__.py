"""keyd's wire protocol: the vocabulary both sides share. Its two messages have a module each.

    keyd/protocol/__init__.py   this: version, limits, ops, reasons, error code numbers, identifier
                                alphabets, ProtocolError, the frame
    keyd/protocol/request.py    the request body: parsed by keyd, encoded by the client
    keyd/protocol/response.py   the response body: encoded by keyd, parsed by the client

Each message's encoder and parser sit side by side, so "exactly one encoding per message" is checked
in one file. The ciphertexts the messages carry have their own format: keyd/envelope.py.

Why binary and not JSON: a field round trip must cost well under 25 µs end to end, and JSON plus
base64 on both sides is a measurable share of that. The format is parsed with a handful of slices
and one regex per identifier, and it is strict: every length is bounded, every identifier matches a
fixed alphabet, nothing may trail the last item, and there is exactly one way to encode a given
request (no optional fields, no padding, no alternative spellings).

Frame (both directions): ``u32 big-endian body length`` then the body. ``0 < length <= MAX_FRAME``.
The body starts with ``u8 protocol version (1)``; the rest is request.py's or response.py's.

Only whole-request problems (a frame that does not parse, sealed, forbidden peer) use the error
envelope; a problem with one item of a batch fails that item alone.
"""

from __future__ import annotations

import re
import struct
from enum import IntEnum, StrEnum

from keyd.errors import BadRequest, ErrorCode

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB: a batch of MAX_ITEMS card fields fits many times over
MAX_ITEMS = 1000
# Caches of identifiers and lengths that passed (they repeat request after request) stop growing here.
CACHE_MAX = 4096

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


U32 = struct.Struct(">I")
U16 = struct.Struct(">H")
# One length byte per value: an identifier's length prefix without a bytes() call per item.
LENGTH_BYTES = [bytes((i,)) for i in range(256)]


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
    REKEY = 19  # arm keyd to take a new secret from the drop path (keyd/keyring.py, re-keying)
    RETIRE_SECRET = 20


CRYPTO_OPS = frozenset(
    {Op.ENCRYPT, Op.DECRYPT, Op.REWRAP, Op.ENCRYPT_BATCH, Op.DECRYPT_BATCH, Op.REWRAP_BATCH}
)
BATCH_OPS = frozenset({Op.ENCRYPT_BATCH, Op.DECRYPT_BATCH, Op.REWRAP_BATCH})
ADMIN_OPS = frozenset({Op.SEAL, Op.ROTATE, Op.RETIRE, Op.REKEY, Op.RETIRE_SECRET})
PLAINTEXT_OPS = frozenset({Op.ENCRYPT, Op.ENCRYPT_BATCH})  # the ops whose items carry plaintext


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
    BAD_REKEY = "bad_rekey"
    # state
    SEALED = "sealed"
    # rekey: the previous re-key is not finished; retire-secret: nothing to retire (reasons, not secrets)
    OLD_SECRET_RETAINED = "old_secret_retained"  # noqa: S105
    NO_OLD_SECRET = "no_old_secret"  # noqa: S105
    OLD_VERSIONS_LIVE = "old_versions_live"  # retire-secret: an old secret's version still decrypts
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


class ProtocolError(BadRequest):
    """A request that does not parse or validate. Carries the stable reason sent on the wire."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.refusal = reason
        self.reason = reason.value


def frame(body: bytes) -> bytes:
    """A body with its length prefix."""
    return U32.pack(len(body)) + body
