"""sslyze, presenting an employee certificate, finds the vhost compliant with Mozilla's
"intermediate" profile (TLS 1.2/1.3 only, its cipher suites and curves, no known TLS flaws).

sslyze lives in its own venv (`.venv-sslyze`, from tests/apache/requirements-sslyze.txt): every
release pins `cryptography` below the version this project pins."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.apache.stack import Stack
from tests.support import component_missing

ROOT = Path(__file__).resolve().parents[2]
SSLYZE_PY = ROOT / ".venv-sslyze" / "bin" / "python"
SCAN = Path(__file__).with_name("sslyze_scan.py")


def test_mozilla_intermediate_compliance_with_a_client_certificate(stack: Stack) -> None:
    cert, key = stack.client("alice")
    assert _scan(stack, str(cert), str(key)) == {"compliant": True, "issues": {}, "error": None}


def test_without_a_client_certificate_the_scan_cannot_even_connect(stack: Stack) -> None:
    # The control: the compliance scan needs the certificate (mTLS is not optional).
    assert _scan(stack, "-", "-")["error"] is not None


def _scan(stack: Stack, cert: str, key: str) -> dict[str, object]:
    if not SSLYZE_PY.exists():
        component_missing(
            "sslyze venv missing: python3 -m venv .venv-sslyze && "
            ".venv-sslyze/bin/pip install -r tests/apache/requirements-sslyze.txt"
        )
    done = subprocess.run(
        [str(SSLYZE_PY), str(SCAN), "localhost", "127.0.0.1", str(stack.port), str(stack.ca_file), cert, key],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    verdict: dict[str, object] = json.loads(done.stdout)
    return verdict
