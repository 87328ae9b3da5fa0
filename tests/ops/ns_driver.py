"""Runs inside fresh PID + network + mount namespaces (see test_processes_ports.py), so what it sees
running and listening is exactly what it started: the other helpers' processes do not leak in.

Steps: record and approve a baseline, one pass (expect silence), start an unknown program and open a
new listening port, a second pass (expect both alerts), a third pass (ongoing: no repeat).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ops.runner import approve_baseline, record_baseline, run_pass
from ops.settings import parse
from ops.state import StateDir
from webapp.db.engine import make_engine


def main() -> None:
    state_dir, db_url, work = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    settings = parse({"state_dir": str(state_dir), "database_url": db_url}, environ={})
    state = StateDir(state_dir)
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    only = ("processes", "ports")
    approve_baseline(state, record_baseline(settings, state=state, now=now))
    passes = [run_pass(settings, state=state, engine=engine, now=now, only=only)]
    intruder = work / "intruder"
    shutil.copy("/bin/sleep", intruder)
    proc = subprocess.Popen([str(intruder), "300"])
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))  # noqa: S104 - inside a private network namespace
    listener.listen()
    port = listener.getsockname()[1]
    time.sleep(0.1)
    try:
        passes.append(run_pass(settings, state=state, engine=engine, now=now, only=only))
        passes.append(run_pass(settings, state=state, engine=engine, now=now, only=only))
    finally:
        proc.kill()
        proc.wait()
        listener.close()
    passes.append(run_pass(settings, state=state, engine=engine, now=now, only=only))
    print(
        json.dumps(
            {
                "port": port,
                "passes": [
                    {
                        "alerted": [[str(f.alert), f.resource, f.detail] for f in p.alerted],
                        "ongoing": [[str(f.alert), f.resource] for f in p.ongoing],
                    }
                    for p in passes
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
