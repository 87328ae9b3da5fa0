"""The timer's deploy files: systemd accepts the units, the example settings parse, the failure
notice is bare."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from ops.settings import CHECKS, parse
from tests.support import need_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "ops" / "deploy"


def test_units_verify(tmp_path: Path) -> None:
    analyze = need_binary("systemd-analyze")
    units = sorted([*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")])
    assert {u.name for u in units} >= {"strongroom-watch.service", "strongroom-watch.timer"}
    for unit in units:
        # Installed under /opt/strongroom; here the checkout stands in so ExecStart= paths exist.
        text = unit.read_text().replace("/opt/strongroom", str(ROOT))
        (tmp_path / unit.name).write_text(text)
    res = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u.name) for u in units)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr


def test_the_example_settings_parse() -> None:
    raw = tomllib.loads((DEPLOY / "watch.toml").read_text())
    s = parse(raw, environ={"STRONGROOM_DATABASE_URL": "mysql+pymysql://strongroom@localhost/vault"})
    assert s.checks == CHECKS  # every check enabled
    assert str(s.state_dir) == "/var/lib/strongroom-watch"


def test_every_check_runs_from_one_of_the_timers() -> None:
    listed = set()
    for unit in ("strongroom-watch.service", "strongroom-watch-slow.service"):
        words = (DEPLOY / unit).read_text().replace("\\\n", " ").split()
        listed |= {words[i + 1] for i, w in enumerate(words) if w == "--check"}
    assert listed == set(CHECKS)


def test_the_failure_notice_is_bare(tmp_path: Path) -> None:
    capture = tmp_path / "sendmail"
    out = tmp_path / "mail.txt"
    # A stand-in for sendmail that only records what it was given (the real postfix path is
    # tested in test_postfix.py).
    capture.write_text(f'#!/bin/sh\necho "$@" > {out}.args\ncat > {out}\n')
    capture.chmod(0o755)
    subprocess.run(
        [str(DEPLOY / "watch-failed.sh")], env={"SENDMAIL": str(capture), "PATH": "/usr/bin:/bin"}, check=True
    )
    text = out.read_text()
    assert text.startswith("Subject: Strongroom: watchdog failed on ")
    assert "check the server" in text
    assert Path(f"{out}.args").read_text().split() == ["-oi", "root"]
