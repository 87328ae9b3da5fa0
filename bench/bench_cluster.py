"""Multi-node benchmark: employees' requests per second through HAProxy with one and with two web nodes,
side by side in one run, on the deployment the multi-node test builds (tests/cluster/deployment.py:
three Galera nodes, HAProxy in TCP passthrough with the PROXY protocol, two web nodes each with Apache,
gunicorn and its own keyd, all in network namespaces on this machine).

Run as root from the repo root: `.venv/bin/python bench/bench_cluster.py` (or `make bench`).

The load is the multi-node test's working day (tests/cluster/employees.py): each employee adds a
record, adds two cards to it, opens it and lists the records, again and again, every request a new
TLS connection with the employee's client certificate (as a browser without keep-alive). The "one
node" cell puts web2 in maintenance in the balancer, so both cells cross the same balancer. Per cell:
requests per second (counted in the web nodes' Apache access logs), steps per second, and the p50/p99
of a step. Not a test: nothing fails on a slow machine; a failed step is reported, and the run exits 1.

On one machine every node shares the same cores (here: 2), so a second web node cannot add CPU: the
ratio shows what the balancer and a second node cost or win on one box, not the scale-out of two
machines. docs/benchmarks.md records the figures with the date and the machine.

Settings (environment):
    BENCH_SECONDS     seconds per cell (default 20)
    BENCH_EMPLOYEES   employees working at once (default 8)
"""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The multi-node test's own deployment and employees: the benchmark measures what that test proves.
from tests.cluster.deployment import WEBS, Deployment, deployment  # noqa: E402
from tests.cluster.employees import Browser, Employees, Report  # noqa: E402

PASSWORD = "correct horse battery staple 2026"  # noqa: S105 - the benchmark's made-up employees


def percentile(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * pct // 100)] if ordered else 0.0


def cell(d: Deployment, office: Employees, clerks: list[Browser], seconds: float, label: str) -> float:
    before, reruns, started = sum(d.served().values()), d.rerun_requests(), time.monotonic()
    report: Report = office.load(clerks, seconds=seconds).result(timeout=seconds + 300)
    elapsed = time.monotonic() - started
    served, reruns = sum(d.served().values()) - before, d.rerun_requests() - reruns
    steps = [(s.ended - s.started) * 1000 for s in report.steps]
    rps = served / elapsed
    print(
        f"{label:<10} {rps:8.1f} req/s  {len(report.steps) / elapsed:7.1f} steps/s  "
        f"step p50 {percentile(steps, 50):6.0f} ms  p99 {percentile(steps, 99):6.0f} ms  "
        f"failed {len(report.failed)}  retried {len(report.retried)}  run again in the app {reruns}"
    )
    if report.failed:
        raise SystemExit(f"{label}: {len(report.failed)} steps failed")
    return rps


def main() -> None:
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    employees = int(os.environ.get("BENCH_EMPLOYEES", "8"))
    print(
        f"# bench_cluster {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores"
    )
    print(f"# {employees} employees, {seconds:.0f} s per cell, through HAProxy (TCP passthrough, PROXY v2)")
    budgets = [f"--budget={s}.{w}=1000000" for s in ("employee", "global") for w in ("minute", "hour", "day")]
    with deployment(keyd_budgets=budgets) as d:
        names = [f"clerk{i}" for i in range(1, employees + 1)]
        for name in names:
            d.add_person(name, "clerk", PASSWORD)
        with Employees(d.lan, "client", d.lan.address("lb"), d.ca_file, threads=employees + 4) as office:
            clerks = [office.browser(*d.certs_of(n), n, PASSWORD) for n in names]
            for b in clerks:
                b.login()
            office.load(clerks, seconds=min(3.0, seconds)).result(timeout=300)  # warm-up
            two = cell(d, office, clerks, seconds, "two nodes")
            with d.only(WEBS[0]):
                one = cell(d, office, clerks, seconds, "one node")
    print(f"two nodes / one node: {two / one:.2f}")


if __name__ == "__main__":
    main()
