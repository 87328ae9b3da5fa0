"""bench/bench_import.py runs end to end at a small size (BENCH_IMPORT_ROWS=2000) and prints its figures:
a smoke test of the benchmark, not a timed test (nothing here depends on how fast the machine is)."""

from __future__ import annotations

import re

from tests.bench.support import run_bench
from tests.support import need_binary, need_root


def test_small_run_prints_the_rates() -> None:
    need_root()
    need_binary("mariadbd")
    out = run_bench("bench_import.py", BENCH_IMPORT_ROWS="2000", BENCH_IMPORT_BATCH="500")
    assert re.search(r"import, end to end \(2,000 cards, 1,000 records\)\s+[\d.]+ s", out), out
    assert re.search(r"import rate\s+[\d,]+ cards/s", out), out
    assert re.search(r"keyd encrypt_batch\(999\) alone, same run\s+[\d,]+ fields/s", out), out
    assert re.search(r"import / keyd-alone\s+\d+%", out), out
