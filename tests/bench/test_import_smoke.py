"""bench/bench_import.py runs end to end at a small size (BENCH_IMPORT_ROWS=2000) and prints its figures:
a smoke test of the benchmark, not a timed test (nothing here depends on how fast the machine is)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]


def test_small_run_prints_the_rates() -> None:
    need_root()
    need_binary("mariadbd")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "BENCH_"))}
    env |= {"BENCH_IMPORT_ROWS": "2000", "BENCH_IMPORT_BATCH": "500"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_import.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"import, end to end \(2,000 cards, 1,000 records\)\s+[\d.]+ s", out), out
    assert re.search(r"import rate\s+[\d,]+ cards/s", out), out
    assert re.search(r"keyd encrypt_batch\(999\) alone, same run\s+[\d,]+ fields/s", out), out
    assert re.search(r"import / keyd-alone\s+\d+%", out), out
