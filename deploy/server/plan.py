"""Check-or-apply primitives: every step says what it wants, and this decides whether it differs.

In apply mode a difference is fixed and printed as `changed: WHAT`; in check mode nothing is touched
and it is printed as `drift: WHAT`. Files compare by content, owner and mode. `root` is "/" on a
server; the unit tests point it at a throwaway tree (owners then come from ROOT/etc/passwd).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Standard library only, like this package: the installer runs it before any virtualenv exists.
from common import atomic


class InstallError(RuntimeError):
    """A step could not be applied; the message says which and never carries a secret."""


@dataclass(frozen=True)
class Want:
    """A file's desired state."""

    path: str  # absolute, on the target
    content: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


@dataclass
class Plan:
    root: Path
    check: bool
    out: Callable[[str], None] = print
    changes: list[str] = field(default_factory=list)
    # Services whose configuration changed in this run: restarted (not just started) at the end.
    restart: set[str] = field(default_factory=set)

    # ---- reporting -------------------------------------------------------------------------------

    def change(self, what: str, apply: Callable[[], object] | None = None) -> None:
        """One difference: report it, and fix it unless checking."""
        self.changes.append(what)
        if self.check:
            self.out(f"drift: {what}")
            return
        if apply is not None:
            apply()
        self.out(f"changed: {what}")

    def note(self, text: str) -> None:
        """Something expected that the operator must do next: said in both modes, never drift."""
        self.out(f"next: {text}")

    # ---- files -----------------------------------------------------------------------------------

    def on_target(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def ids(self, owner: str, group: str) -> tuple[int, int] | None:
        uid = _lookup(self.on_target("/etc/passwd"), owner)
        gid = _lookup(self.on_target("/etc/group"), group)
        return None if uid is None or gid is None else (uid, gid)

    def file(
        self,
        want: Want,
        *,
        restarts: Sequence[str] = (),
        validate: Callable[[Path], None] | None = None,
    ) -> bool:
        """Content, owner and mode as wanted; returns whether it differed. `validate` is given the new
        file, written beside the old one, before it replaces it: it raises InstallError to keep the old."""
        target = self.on_target(want.path)
        if target.is_symlink():
            raise InstallError(f"{want.path} is a symbolic link: refusing (remove it, check who made it)")
        ids = self.ids(want.owner, want.group)
        if ids is None and not self.check:
            raise InstallError(f"{want.path}: owner {want.owner}:{want.group} does not exist")
        try:
            st = target.stat()
            same_meta = ids is not None and (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (*ids, want.mode)
            same = same_meta and target.read_bytes() == want.content
        except FileNotFoundError:
            same = False
        if same:
            return False
        self.change(want.path, lambda: _write(target, want.content, want.mode, ids or (0, 0), validate))
        self.restart.update(restarts)
        return True

    def dir(self, path: str, mode: int = 0o755, owner: str = "root", group: str = "root") -> bool:
        target = self.on_target(path)
        if target.is_symlink():
            raise InstallError(f"{path} is a symbolic link: refusing")
        ids = self.ids(owner, group)
        try:
            st = target.stat()
            if ids is not None and (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (*ids, mode):
                return False
        except FileNotFoundError:
            pass

        def apply() -> None:
            if ids is None:
                raise InstallError(f"{path}: owner {owner}:{group} does not exist")
            target.mkdir(parents=True, exist_ok=True)
            os.chown(target, *ids)
            target.chmod(mode)

        self.change(f"{path}/", apply)
        return True

    def absent(self, path: str) -> bool:
        target = self.on_target(path)
        if not target.exists() and not target.is_symlink():
            return False
        self.change(f"{path} removed", target.unlink)
        return True

    def read(self, path: str) -> bytes | None:
        try:
            return self.on_target(path).read_bytes()
        except FileNotFoundError:
            return None


def _lookup(table: Path, name: str) -> int | None:
    try:
        lines = table.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) > 2 and parts[0] == name:
            return int(parts[2])
    return None


def _write(
    target: Path,
    content: bytes,
    mode: int,
    ids: tuple[int, int],
    validate: Callable[[Path], None] | None = None,
) -> None:
    """Atomically: a reader (a service starting) sees the old file or the new one, never half; a file
    that `validate` refuses never replaces the old one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name has dots: sudo, cron and apt skip it in their .d directories meanwhile.
    atomic.write_bytes(target, content, mode=mode, owner=ids, check=validate)


def run(
    cmd: Sequence[str],
    *,
    what: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> str:
    """Run a command; on failure raise InstallError naming WHAT with the command's stderr tail (the
    commands run here never get a secret on their command line)."""
    res = subprocess.run(
        list(cmd), capture_output=True, text=True, input=input, env=env, cwd=cwd, check=False
    )
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise InstallError(f"{what}: {cmd[0]} exited {res.returncode}\n{tail}")
    return res.stdout


def warn(text: str) -> None:
    print(f"strongroom-install: warning: {text}", file=sys.stderr)
