"""Run the real `openssl` binary: the tests check what the CA writes with a second implementation."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

from tests.support import need_binary


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_binary("openssl"), *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def verify(
    ca_dir: Path, cert: Path, *, crl: bool, at: datetime | None = None, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`openssl verify` against the published chain (at time `at`); crl=True: with the published CRLs."""
    args = ["verify", "-CAfile", str(ca_dir / "root" / "root.pem")]
    args += ["-untrusted", str(ca_dir / "publish" / "chain.pem")]
    if at is not None:
        args += ["-attime", str(int(at.timestamp()))]
    if crl:
        args += ["-crl_check_all", "-CRLfile", str(ca_dir / "publish" / "crl.pem")]
    return openssl(*args, *extra, str(cert))
