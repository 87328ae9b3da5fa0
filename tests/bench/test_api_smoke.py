"""bench/bench_api.py runs end to end in a tiny mode (1 client, 1 s a cell, SQLite) and prints its
table and the goals: a smoke test of the benchmark, not a timed test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
ROWS = (("bare", r"GET \(ab\)"), ("bare", "POST"), ("strongroom", "masked"), ("strongroom", "add-card"))


def test_tiny_run_prints_the_table_and_the_goals() -> None:
    need_root()
    need_binary("ab")
    need_binary("apache2")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "BENCH_"))}
    env |= {"BENCH_DATABASES": "sqlite", "BENCH_CLIENTS": "1", "BENCH_SECONDS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_api.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for app, page in ROWS:
        # app, workers, page, clients 1, req/s, p50, p99, max, requests, 0 errors
        row = re.search(
            rf"^\s+{app}\s+\S+\s+{page}\s+1\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+\d+\s+\d+\s+0\s", out, re.M
        )
        assert row is not None, f"no row for {app} {page}:\n{out}"
        assert float(row.group(1)) > 0
    assert "goals, sqlite" in out
    assert re.search(r"add-card\s+1 clients: .* of bare", out), out
    assert "load average" in out
