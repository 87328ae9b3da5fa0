"""Certificate-to-user binding in the web app's database (defence in depth beside the CRL).

The web app owns its database; this tool talks to it only through the web app's own CLI:

    flask --app webapp certs bind USERNAME CERT_PEM_FILE     exit 0, or 1 + one-line reason on stderr
    flask --app webapp certs unbind FINGERPRINT --reason TEXT

so the CA never needs database credentials, and the web app keeps its invariants (one active binding
per user, sessions ended on unbind) in one place. The environment is inherited: the web app finds
its database through its STRONGROOM_* variables.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509

from ca.pki import fingerprint, pem

DEFAULT_TIMEOUT = 60.0


class BindError(Exception):
    """The web app refused or could not be reached; the message is its one-line reason."""


class Binder(Protocol):
    def bind(self, name: str, cert: x509.Certificate) -> None: ...

    def unbind(self, fingerprint: str, reason: str) -> None: ...


def default_webapp_command() -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "webapp"]


def default_webapp_dir() -> Path:
    """The Strongroom checkout (or install) this tool runs from: where `--app webapp` is importable."""
    return Path(__file__).resolve().parent.parent


def _one_line(text: str) -> str:
    """The web app's reason: its `Error: ...` line if there is one (it may log other lines), else the last,
    without the prefix (the CA's own message says "Error:" once)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln[len("error:") :].strip() for ln in lines if ln.lower().startswith("error:")]
    line = (errors or lines or ["no reason given"])[-1]
    return "".join(ch for ch in line if ch.isprintable())[:300]


class WebappBinder:
    """The real binder: runs the web app's `certs` commands as a subprocess."""

    def __init__(self, command: list[str], *, cwd: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not command:
            raise ValueError("the web app command must not be empty")
        self._command = list(command)
        self._cwd = cwd
        self._timeout = timeout

    def _run(self, args: list[str]) -> None:
        try:
            proc = subprocess.run(
                [*self._command, "certs", *args],
                cwd=self._cwd,
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BindError(f"could not run the web app command: {type(e).__name__}: {e}") from None
        if proc.returncode != 0:
            raise BindError(_one_line(proc.stderr or proc.stdout))

    def bind(self, name: str, cert: x509.Certificate) -> None:
        with tempfile.TemporaryDirectory(prefix="strongroom-ca-") as tmp:  # created 0700
            path = Path(tmp) / "cert.pem"
            path.write_bytes(pem(cert))
            self._run(["bind", name, str(path)])

    def unbind(self, fingerprint: str, reason: str) -> None:
        self._run(["unbind", fingerprint, "--reason", reason])


@dataclass
class FakeBinder:
    """For tests: records calls; `refuse_bind` / `refuse_unbind` make it fail like the web app would.

    The real web app is exercised by tests/ca/test_webapp_binding.py once `certs bind` exists.
    """

    refuse_bind: str | None = None
    refuse_unbind: str | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)
    bound: dict[str, str] = field(default_factory=dict)  # fingerprint -> name, the active bindings

    def bind(self, name: str, cert: x509.Certificate) -> None:
        if self.refuse_bind:
            raise BindError(self.refuse_bind)
        fp = fingerprint(cert)
        self.calls.append(("bind", name, fp))
        self.bound = {f: n for f, n in self.bound.items() if n != name}  # the previous binding ends
        self.bound[fp] = name

    def unbind(self, fingerprint: str, reason: str) -> None:
        if self.refuse_unbind:
            raise BindError(self.refuse_unbind)
        if fingerprint not in self.bound:
            raise BindError(f"unknown fingerprint {fingerprint}")
        self.calls.append(("unbind", fingerprint, reason))
        del self.bound[fingerprint]
