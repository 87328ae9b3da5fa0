"""Running a benchmark script at a tiny size, as its smoke test does: a clean environment (none of
the caller's STRONGROOM_* or BENCH_* settings), the given BENCH_* settings, and its printed figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, **settings: str) -> str:
    """Run bench/`script` with these BENCH_* settings; its stdout, or AssertionError with its tail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "BENCH_"))}
    env |= settings
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
