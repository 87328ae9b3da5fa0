"""bench/bench_api.py runs end to end in a tiny mode (1 client, 1 s a cell, SQLite) and prints its
table and the goals: a smoke test of the benchmark, not a timed test."""

from __future__ import annotations

import re

from tests.bench.support import run_bench
from tests.support import need_binary, need_root

ROWS = (("bare", r"GET \(ab\)"), ("bare", "POST"), ("strongroom", "masked"), ("strongroom", "add-card"))


def test_tiny_run_prints_the_table_and_the_goals() -> None:
    need_root()
    need_binary("ab")
    need_binary("apache2")
    out = run_bench("bench_api.py", BENCH_DATABASES="sqlite", BENCH_CLIENTS="1", BENCH_SECONDS="1")
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
