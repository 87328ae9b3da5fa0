"""Looking for secrets where they must not be: the byte forms a secret can take, and a bounded file walk.

A secret (a passphrase, a password) is searched as its UTF-8 bytes, UTF-16LE, hex (both cases) and
base64 (standard and URL-safe, at each of the three byte alignments a larger encoded blob can put
it at, so a secret inside a bigger base64 payload is still found).
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

BIG = 50 * 1024 * 1024  # files above this are listed, not read
MIN_FRAGMENT = 12  # an encoded fragment shorter than this could match by chance


def spellings(secret: str | bytes) -> dict[str, bytes]:
    """name -> bytes: every form of `secret` (text, or a binary key) searched for."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    forms = {
        "raw": raw,
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
    }
    if isinstance(secret, str):
        forms["utf-16le"] = secret.encode("utf-16-le")
    for shift in range(3):
        usable = (len(raw) - shift) // 3 * 3
        chunk = raw[shift : shift + usable]
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            encoded = encode(chunk)
            if len(encoded) >= MIN_FRAGMENT:
                forms[f"{name}+{shift}"] = encoded
    return forms


@dataclass
class Walk:
    files: int = 0
    bytes: int = 0
    skipped: list[tuple[str, int]] = field(default_factory=list)  # (path, size) of files above BIG


def regular_files(
    root: Path, *, exclude: Iterable[str] = (), walk: Walk | None = None
) -> Iterator[tuple[str, bytes]]:
    """(path inside `root`, content) of every regular file under `root` (symbolic links not followed),
    except paths under `exclude` (absolute, inside `root`) and files above BIG (recorded in `walk`)."""
    excluded = tuple(e.rstrip("/") for e in exclude)
    walk = walk if walk is not None else Walk()
    for top, dirs, files in os.walk(root, followlinks=False):
        inside = "/" + os.path.relpath(top, root).removeprefix(".").lstrip("/")
        dirs[:] = [d for d in dirs if not _excluded(os.path.join(inside, d), excluded)]
        for name in files:
            path = os.path.join(top, name)
            where = os.path.join(inside, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if info.st_size > BIG:
                walk.skipped.append((where, info.st_size))
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            walk.files += 1
            walk.bytes += len(data)
            yield where, data


def _excluded(path: str, excluded: tuple[str, ...]) -> bool:
    return any(path == e or path.startswith(e + "/") for e in excluded)


def needles(secrets: Mapping[str, str | bytes]) -> list[tuple[str, bytes]]:
    """('name (form)', bytes) for every secret in every spelling (computed once per scan)."""
    return [(f"{name} ({form})", needle) for name, secret in secrets.items()
            for form, needle in spellings(secret).items()]  # fmt: skip


def find_secrets(data: bytes, wanted: list[tuple[str, bytes]]) -> list[str]:
    """The labels of `needles(...)` found in `data` (labels only: never a value)."""
    return [label for label, needle in wanted if needle in data]


def find_in_big_file(path: Path, wanted: list[tuple[str, bytes]], chunk: int = 16 << 20) -> list[str]:
    """`find_secrets` over a file too big to read at once: chunks that overlap by the longest needle."""
    overlap = max((len(n) for _label, n in wanted), default=1)
    found: set[str] = set()
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            data = tail + block
            found.update(find_secrets(data, wanted))
            tail = data[-overlap:]
    return sorted(found)
