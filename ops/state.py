"""The watchdog's state directory: the approved baseline, log offsets, open findings, daily counters.

Root-only (0700 directory, 0600 files) and written atomically (temp file, fsync, rename), so a crash
mid-write leaves the previous state, never half a file. Names are fixed identifiers, never paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import atomic

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_STATE_BYTES = 16 * 1024 * 1024


class StateError(RuntimeError):
    """The state directory is unusable (unsafe permissions, corrupt file)."""


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = self.path.stat()
        if st.st_mode & 0o077:
            # Anyone who can write the baseline can approve their own backdoor.
            raise StateError(f"{self.path} must not be accessible to group or others")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One pass at a time: the frequent and the slow timer share this state (open findings,
        offsets), and two writers would lose each other's updates. The second one waits."""
        self.ensure()
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _file(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"bad state name: {name!r}")
        return self.path / f"{name}.json"

    def exists(self, name: str) -> bool:
        return self._file(name).exists()

    def load(self, name: str) -> dict[str, Any] | None:
        path = self._file(name)
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(raw) > MAX_STATE_BYTES:
            raise StateError(f"{path.name} is too large")
        try:
            data = json.loads(raw)
        except ValueError:
            raise StateError(f"{path.name} is not valid JSON") from None
        if not isinstance(data, dict):
            raise StateError(f"{path.name} must hold an object")
        return data

    def raw(self, name: str) -> bytes | None:
        try:
            return self._file(name).read_bytes()
        except FileNotFoundError:
            return None

    def save(self, name: str, data: dict[str, Any]) -> None:
        self.ensure()
        path = self._file(name)
        payload = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
        atomic.write_bytes(path, payload, mode=0o600)

    def remove(self, name: str) -> None:
        self._file(name).unlink(missing_ok=True)
