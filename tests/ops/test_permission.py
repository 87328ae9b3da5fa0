"""Permission denied is an alert, never a pass: the watchdog run as an unprivileged user (setpriv) over a
root-only log and the socket table, whose owners it cannot see."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.conftest import queued
from tests.support import need_binary, need_root
from webapp.db.engine import make_engine

NOBODY = 65534


@pytest.fixture
def shared(schema_template: Path) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="ops-perm-"))
    os.chmod(base, 0o711)  # noqa: S103 - traversable, not listable
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unreadable_log_and_hidden_processes_alert(
    shared: Path, schema_template: Path, python_for_others: Path
) -> None:
    need_root()
    setpriv = need_binary("setpriv")
    work = shared / "work"
    work.mkdir()
    db = work / "strongroom.db"
    db.write_bytes(schema_template.read_bytes())
    log = shared / "secure.log"
    log.write_text("root only\n")
    log.chmod(0o600)
    state = work / "state"
    conf = work / "watch.toml"
    conf.write_text(
        f'state_dir = "{state}"\ndatabase_url = "sqlite:///{db}"\nchecks = ["logs", "ports"]\n'
        f'logs = {{ secure = "{log}" }}\n'
    )
    for path in (work, db, conf):
        os.chown(path, NOBODY, NOBODY)
    proc = subprocess.run(
        [
            setpriv,
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            # An installed copy, not the checkout: the checkout may sit where nobody cannot enter.
            str(python_for_others),
            "-m",
            "ops.watch",
            "--config",
            str(conf),
            "run",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    engine = make_engine(f"sqlite:///{db}")
    try:
        rows = queued(engine)
    finally:
        engine.dispose()
    assert ("ops.check_failed", "logs", "secure: Permission denied") in rows
    assert ("ops.check_failed", "ports", "listing sockets and their owners needs root") in rows
    assert len(rows) == 2
