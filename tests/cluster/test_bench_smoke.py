"""bench/bench_cluster.py at a tiny size: it builds the deployment, runs both cells and prints them."""

from __future__ import annotations

import re

import pytest

from tests.bench.support import run_bench

pytestmark = pytest.mark.cluster


def test_the_cluster_benchmark_compares_one_and_two_nodes() -> None:
    out = run_bench("bench_cluster.py", BENCH_SECONDS="2", BENCH_EMPLOYEES="2")
    assert re.search(r"^two nodes\s+[\d.]+ req/s", out, re.MULTILINE), out
    assert re.search(r"^one node\s+[\d.]+ req/s", out, re.MULTILINE), out
    assert re.search(r"^two nodes / one node: [\d.]+$", out, re.MULTILINE), out
