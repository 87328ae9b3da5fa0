"""bench/bench_production_path.py runs end to end in its tiny mode (1 client, 20 requests a cell, SQLite)
and prints its table and the goals: a smoke test of the benchmark, not a timed test (nothing here
depends on how fast the machine is)."""

from __future__ import annotations

import re

from tests.bench.support import run_bench
from tests.support import need_binary, need_root

PAGES = ("bare route", "home", "masked", "search", "static")
# The default configuration (gunicorn_conf.py's) and the same model with one process.
MAIN, ONE = r"(?:sync:\d+|gthread:\d+x\d+)", r"(?:sync:1|gthread:1x\d+)"


def test_tiny_run_prints_the_table() -> None:
    need_root()
    need_binary("ab")
    need_binary("apache2")
    out = run_bench(
        "bench_production_path.py", BENCH_DATABASES="sqlite", BENCH_CLIENTS="1", BENCH_REQUESTS="20"
    )
    for column in ("req/s", "p50 ms", "p99 ms", "max ms", "app CPU"):
        assert column in out, out
    for page in PAGES:
        # app, workers, page, clients 1, then req/s and the three latencies; 20 requests, 0 errors.
        row = re.search(
            rf"^\s+\S+\s+{MAIN}\s+{page}\s+1\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+\d+\s+20\s+0\s", out, re.M
        )
        assert row is not None, f"no row for {page}:\n{out}"
        assert float(row.group(1)) > 0
    # the 1-worker comparison and the goals, with the load average the figures were taken under
    assert re.search(rf"^\s+strongroom\s+{ONE}\s+masked\s+1\s", out, re.M), out
    assert re.search(rf"goals, sqlite \({MAIN}\)", out), out
    assert "app CPU per masked view" in out
    assert "load average" in out
