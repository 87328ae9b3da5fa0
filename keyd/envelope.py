"""The ciphertext format: the one place that knows how a stored value is laid out.

Layout (binary)::

    u8  format version (FORMAT_VERSION, 1)
    u32 key version (big-endian, 1 or more)
    12  nonce (random, made by keyd, never by the caller)
    ..  AES-GCM ciphertext followed by the 16-byte tag

The first HEADER_LEN bytes (format and key version) are public and authenticated: keyd binds them
into the associated data (keyd/cipher.py), so a value relabelled with another key version does not
decrypt. Everything else asks this module: keyd's cipher to emit and split a value, the wire
protocol for its length limits, and the client (re-exported there for the web app) to read a stored
value's key version without a key.

Pure `struct`, no cryptography: the client imports it, and the web app must not load key handling code.
"""

from __future__ import annotations

import struct

FORMAT_VERSION = 1
_HEADER = struct.Struct(">BI")
HEADER_LEN = _HEADER.size  # 5
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = HEADER_LEN + NONCE_LEN + TAG_LEN  # 33: what a ciphertext adds to its plaintext
MAX_PLAINTEXT = 16 * 1024  # a field is a card number, a note, a secret: never a document
MAX_CIPHERTEXT = MAX_PLAINTEXT + OVERHEAD  # longer than this, keyd never made it


_TOO_SHORT = "not a keyd ciphertext: too short"
_UNKNOWN_FORMAT = "not a keyd ciphertext: unknown format"


class MalformedCiphertext(ValueError):
    """Not a ciphertext of a format keyd knows: too short, another format byte, or key version 0.

    A ValueError, so callers that only count key versions (the web app) need not import keyd's names.
    The message never carries the value.
    """


def header(version: int) -> bytes:
    """The header of a ciphertext made under key `version`."""
    return _HEADER.pack(FORMAT_VERSION, version)


def header_key_version(head: bytes) -> int:
    """The key version from a value's first HEADER_LEN bytes alone (e.g. a SQL SUBSTR of the column).

    Checks the header only, not the length of the whole value: use key_version when you have it all.
    """
    if len(head) < HEADER_LEN:
        raise MalformedCiphertext(_TOO_SHORT)
    fmt, version = _HEADER.unpack_from(head)
    if fmt != FORMAT_VERSION or version == 0:
        raise MalformedCiphertext(_UNKNOWN_FORMAT)
    return int(version)


def key_version(ciphertext: bytes) -> int:
    """The key version a stored ciphertext was made under (public: it is the clear header).

    For counting fields per version and choosing what to rewrap. Raises MalformedCiphertext for
    anything that is not a keyd ciphertext. It proves nothing about integrity: only keyd can.
    """
    if len(ciphertext) < OVERHEAD:
        raise MalformedCiphertext(_TOO_SHORT)
    return header_key_version(ciphertext)


def split(ciphertext: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(key version, header, nonce, ciphertext+tag). Raises MalformedCiphertext. The inverse of join."""
    # key_version's checks, inlined: this runs for every value keyd opens, and two calls cost ~2 % of
    # a decrypt batch. tests/keyd/test_envelope.py holds both to the same table.
    if len(ciphertext) < OVERHEAD:
        raise MalformedCiphertext(_TOO_SHORT)
    fmt, version = _HEADER.unpack_from(ciphertext)
    if fmt != FORMAT_VERSION or version == 0:
        raise MalformedCiphertext(_UNKNOWN_FORMAT)
    h = HEADER_LEN
    return version, ciphertext[:h], ciphertext[h : h + NONCE_LEN], ciphertext[h + NONCE_LEN :]


def join(head: bytes, nonce: bytes, sealed: bytes) -> bytes:
    """A ciphertext from its header, nonce and AES-GCM output (ciphertext+tag). The inverse of split."""
    return b"".join((head, nonce, sealed))
