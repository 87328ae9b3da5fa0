"""Process hardening and the locked page that holds the master key."""

from __future__ import annotations

import subprocess
import sys

from keyd.hardening import LockedSecret
from tests.keyd.conftest import ROOT


def test_locked_secret_holds_and_wipes() -> None:
    secret = LockedSecret(b"k" * 32)
    assert secret.locked  # one page is within even an unprivileged memlock limit
    with secret.view() as view:
        assert bytes(view) == b"k" * 32
    secret.close()
    secret.close()  # idempotent


def test_harden_in_a_child_process() -> None:
    code = (
        "import resource; from keyd import hardening; problems = hardening.harden(); "
        "status = open('/proc/self/status').read(); "
        "print(resource.getrlimit(resource.RLIMIT_CORE), status.count('VmLck'), problems)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("(0, 0) 1 ")
    # PR_GET_DUMPABLE (3) reads the flag back.
    code = (
        "from keyd import hardening; hardening.no_core_dumps(); print(hardening._libc.prctl(3, 0, 0, 0, 0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "0"
