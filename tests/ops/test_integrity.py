"""The integrity check runs a real AIDE on a private config and tree (the production config is the
hardening issue's; here its path is just a setting)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.ops.conftest import queued
from tests.support import need_binary

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _aide_tree(tmp_path: Path, aide: str) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "app.py").write_text("print('ok')\n")
    conf = tmp_path / "aide.conf"
    conf.write_text(
        f"database_in=file:{tmp_path}/aide.db\n"
        f"database_out=file:{tmp_path}/aide.db.new\n"
        "report_url=stdout\n"
        "Check = p+u+g+s+sha256\n"
        f"{tree} Check\n"
    )
    subprocess.run([aide, "--init", "--config", str(conf)], check=True, capture_output=True)
    (tmp_path / "aide.db.new").rename(tmp_path / "aide.db")
    return conf


def _pass(settings: Settings, engine: sa.Engine) -> None:
    run_pass(settings, state=StateDir(settings.state_dir), engine=engine, now=NOW, only=("integrity",))


def test_clean_is_quiet_a_change_alerts_once(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    aide = need_binary("aide")
    conf = _aide_tree(tmp_path, aide)
    s = make_settings(aide_config=str(conf), aide_binary=aide)
    _pass(s, engine)
    assert queued(engine) == []
    (tmp_path / "tree" / "app.py").write_text("print('backdoor')\n")
    (tmp_path / "tree" / "new").write_text("x\n")
    _pass(s, engine)
    _pass(s, engine)  # the same changes: no second mail
    assert queued(engine) == [("ops.integrity_changed", str(conf), "added,changed")]
    (tmp_path / "tree" / "new").unlink()
    _pass(s, engine)  # a different set of changes: alerted again
    assert queued(engine)[-1] == ("ops.integrity_changed", str(conf), "changed")


def test_missing_tool_or_config_or_database_is_an_alert(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    aide = need_binary("aide")
    conf = _aide_tree(tmp_path, aide)
    _pass(make_settings(aide_config=str(conf), aide_binary="/nonexistent/aide"), engine)
    _pass(make_settings(aide_config=str(tmp_path / "missing.conf"), aide_binary=aide), engine)
    (tmp_path / "aide.db").unlink()
    _pass(make_settings(aide_config=str(conf), aide_binary=aide), engine)
    rows = queued(engine)
    assert rows[0] == ("ops.check_failed", "integrity", "aide is missing")
    assert rows[1] == ("ops.check_failed", "integrity", "AIDE config is missing")
    assert rows[2][:2] == ("ops.check_failed", "integrity")
    assert rows[2][2].startswith("aide failed with exit code")
