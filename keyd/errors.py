"""The error vocabulary shared by keyd, its wire protocol and its client.

Every refusal keyd sends carries one of these stable codes; the client turns each code back into
the matching exception, so callers catch a few named failures instead of parsing messages.
Messages never contain plaintext, ciphertext, keys, PINs or passphrases.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    SEALED = "sealed"  # no key loaded yet, or sealed again by the operator
    QUOTA_EXCEEDED = "quota_exceeded"  # a decrypt budget is spent
    BAD_REQUEST = "bad_request"  # the frame or request does not parse or validate
    # The stored value cannot be opened: tag, context, format, length or key version (unknown or retired)
    INTEGRITY_FAILURE = "integrity_failure"
    FORBIDDEN = "forbidden"  # the peer is not allowed, or the key version is retired
    INTERNAL = "internal"  # keyd failed; details are in keyd's own log, never on the wire


class KeydError(Exception):
    """Base of everything the keyd client raises."""

    code: ErrorCode = ErrorCode.INTERNAL
    # The stable reason keyd sent with the code (see keyd.protocol.Reason), when there is one.
    reason: str | None = None


class Sealed(KeydError):
    code = ErrorCode.SEALED


class QuotaExceeded(KeydError):
    code = ErrorCode.QUOTA_EXCEEDED


class BadRequest(KeydError):
    code = ErrorCode.BAD_REQUEST


class IntegrityFailure(KeydError):
    """This stored value cannot be opened: the one error for every kind of damage to a ciphertext.

    A flipped byte, a value moved to another row or field, a truncated, empty or oversized value, a
    wrong format byte, a key version keyd never had or one the operator retired: callers catch this
    one class and treat them alike (keyd has already written an `integrity_failure` event); `.reason`
    says which, for the operators.
    """

    code = ErrorCode.INTEGRITY_FAILURE


class Forbidden(KeydError):
    code = ErrorCode.FORBIDDEN


class Internal(KeydError):
    code = ErrorCode.INTERNAL


class Unavailable(KeydError):
    """Client side only: keyd could not be reached or did not answer in time."""

    code = ErrorCode.INTERNAL


BY_CODE: dict[ErrorCode, type[KeydError]] = {
    cls.code: cls for cls in (Sealed, QuotaExceeded, BadRequest, IntegrityFailure, Forbidden, Internal)
}
