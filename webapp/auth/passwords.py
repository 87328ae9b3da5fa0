"""Password hashing (argon2id) and the password policy.

Production parameters are RFC 9106's low-memory profile (argon2id, t=3, m=64 MiB, p=4), stronger than
every OWASP-recommended argon2id configuration; tests pass cheaper ones through the app config and a
test asserts the production defaults stay OWASP-or-stronger. A hash made with other parameters is
upgraded on the next successful login (`needs_rehash`).
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn

PRODUCTION_TIME_COST = 3
PRODUCTION_MEMORY_COST_KIB = 65536
PRODUCTION_PARALLELISM = 4

# OWASP Password Storage Cheat Sheet, argon2id: equivalent (memory KiB, iterations) minimums, p=1.
OWASP_ARGON2ID_MINIMUMS = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))

MIN_LENGTH = 15
MAX_LENGTH = 128  # argon2 does not care, but an unbounded field is a cheap way to burn CPU
HISTORY = 4


def make_hasher(*, time_cost: int, memory_cost: int, parallelism: int) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(
        time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=argon2.Type.ID
    )


def meets_owasp(hasher: argon2.PasswordHasher) -> bool:
    return hasher.type is argon2.Type.ID and any(
        hasher.memory_cost >= m and hasher.time_cost >= t for m, t in OWASP_ARGON2ID_MINIMUMS
    )


# A stored "hash" starting with this is unusable: no password matches it. A one-time password is
# replaced by one the moment it is used (auth/service.py); argon2 hashes always start with "$argon2".
UNUSABLE_PREFIX = "!"


@functools.cache
def _decoy(time_cost: int, memory_cost: int, parallelism: int) -> str:
    """A hash of a random throwaway value with these parameters, verified in place of an unusable
    hash, so that checking a spent one-time password costs what checking a real password costs."""
    hasher = make_hasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
    return hasher.hash(secrets.token_urlsafe(32))


def verify(hasher: argon2.PasswordHasher, stored_hash: str | None, password: str) -> bool:
    """True only when `password` matches `stored_hash`; never raises (a missing, unusable or malformed
    hash is simply False)."""
    unusable = not stored_hash or stored_hash.startswith(UNUSABLE_PREFIX)
    target = (
        _decoy(hasher.time_cost, hasher.memory_cost, hasher.parallelism)
        if unusable or stored_hash is None
        else stored_hash
    )
    try:
        return hasher.verify(target, password) and not unusable
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class PolicyResult:
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons


def check_policy(
    hasher: argon2.PasswordHasher,
    password: str,
    *,
    username: str,
    recent_hashes: Iterable[str],
    min_score: int = 3,
) -> PolicyResult:
    """PCI DSS 8.3.6 and 8.3.7, plus a guessability check. Reasons never quote the password."""
    reasons = []
    if len(password) < MIN_LENGTH:
        reasons.append(f"must be at least {MIN_LENGTH} characters long")
    if len(password) > MAX_LENGTH:
        reasons.append(f"must be at most {MAX_LENGTH} characters long")
    if unicodedata.normalize("NFC", password) != password or any(
        unicodedata.category(c).startswith("C") for c in password
    ):
        reasons.append("must not contain control characters or unnormalized text")
    if not re.search(r"[^\W\d_]", password):
        reasons.append("must contain a letter")
    if not re.search(r"\d", password):
        reasons.append("must contain a digit")
    if password.casefold() == username.casefold() or username.casefold() in password.casefold():
        reasons.append("must not contain the username")
    if not reasons and zxcvbn(password[:MAX_LENGTH], user_inputs=[username])["score"] < min_score:
        reasons.append("is too common or too easy to guess")
    if not reasons and any(verify(hasher, h, password) for h in recent_hashes):
        reasons.append(f"must not be one of the last {HISTORY} passwords")
    return PolicyResult(tuple(reasons))


PIN_MIN, PIN_MAX = 6, 12


def check_pin(pin: str) -> PolicyResult:
    """A second PIN: 6-12 digits, at least 3 different ones, not a straight run (123456, 987654)."""
    reasons = []
    if not (pin.isascii() and pin.isdigit()) or not PIN_MIN <= len(pin) <= PIN_MAX:
        reasons.append(f"must be {PIN_MIN}-{PIN_MAX} digits")
    else:
        steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(pin)}
        if len(set(pin)) < 3:
            reasons.append("must use at least 3 different digits")
        elif steps in ({1}, {9}):
            reasons.append("must not be a run of consecutive digits")
    return PolicyResult(tuple(reasons))
