"""The command line: settings refused strictly, the baseline approved only as reviewed, failures loud."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.settings import SettingsError, parse
from ops.state import StateDir
from tests.ops.conftest import queued
from tests.support import need_binary, need_root

GOOD = {"state_dir": "/var/lib/strongroom-watch", "database_url": "sqlite:////tmp/x.db"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"state_dir": "relative/dir"}, "state_dir: must be an absolute path"),
        ({"unknown_knob": 1}, "unknown_knob: is not a known setting"),
        ({"access_per_cert": 0}, "access_per_cert: must be greater than 0"),
        ({"access_per_cert": True}, "access_per_cert: must be a whole number"),
        ({"access_total": "100"}, "access_total: must be a whole number"),
        ({"checks": ["processes", "telnet"]}, "checks[1]: must be one of 'processes', 'ports', "),
        ({"checks": ["ports", "ports"]}, "checks: must be a list of distinct names"),
        ({"logs": {"../x": "/var/log/x"}}, "logs.'../x': is not a name"),
        ({"logs": {"syslog": "var/log/syslog"}}, "logs.syslog: must be an absolute path"),
        ({"keyd_timeout": -1}, "keyd_timeout: must be greater than 0"),
        ({"keyd_timeout": "2"}, "keyd_timeout: must be a number"),
        ({"remote_copy": "/srv/remote.log"}, "remote_local_log and remote_copy go together"),
        ({"aide_config": "/etc/aide\x00.conf"}, "aide_config: must be an absolute path"),
        ({"log_ignore": "CRON"}, "log_ignore: must be a list"),
        ({"log_ignore": ["("]}, "log_ignore[0]: is not a regular expression"),
        ({"log_ignore": [""]}, "log_ignore[0]: must not be empty"),
        ({"log_ignore": ["x" * 501]}, "log_ignore[0]: must be at most 500 characters long"),
        ({"log_ignore": ["x"] * 101}, "log_ignore: must have at most 100 entries"),
    ],
)
def test_bad_settings_are_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse({**GOOD, **extra}, environ={})
    # One line: where (the key) and the rule, never the value.
    assert str(caught.value).startswith(f"settings: {message}")
    assert "\n" not in str(caught.value)


def test_database_url_defaults_to_the_web_apps() -> None:
    s = parse({"state_dir": "/x"}, environ={"STRONGROOM_DATABASE_URL": "sqlite:////srv/db"})
    assert s.database_url == "sqlite:////srv/db"
    with pytest.raises(SettingsError, match="alerts need the outbox"):
        parse({"state_dir": "/x"}, environ={})


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "watch.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\ndatabase_url = "{db_url}"\nchecks = ["ports", "logs"]\n'
        f'logs = {{ syslog = "{tmp_path / "syslog"}" }}\n'
    )
    (tmp_path / "syslog").write_text("")
    return path


ROOT = Path(__file__).resolve().parents[2]


def _isolated() -> list[str]:
    """The watchdog in PID and network namespaces of its own: its ports check sees only what the
    test starts. The host's own listeners are not the test's, and one of them may be held by a
    process even root cannot look into (a sandbox's init): the check rightly fails closed there."""
    need_root()
    return [need_binary("unshare"), "--pid", "--fork", "--mount-proc", "--net"]


def _invoke(config: Path, *args: str) -> tuple[int, str]:
    res = subprocess.run(
        [*_isolated(), sys.executable, "-m", "ops.watch", "--config", str(config), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return res.returncode, res.stdout + res.stderr


def test_baseline_is_approved_only_as_reviewed(config: Path, tmp_path: Path) -> None:
    code, out = _invoke(config, "baseline", "show")
    assert code == 1
    assert "no baseline" in out
    code, out = _invoke(config, "baseline", "record")
    assert code == 0, out
    digest = out.split()[-1]
    code, out = _invoke(config, "baseline", "show", "--proposed")
    assert code == 0
    assert f"digest {digest}" in out
    # Someone slips an extra listener into the proposal after the admin looked at it.
    proposed = tmp_path / "state" / "baseline-proposed.json"
    data = json.loads(proposed.read_text())
    data["checks"]["ports"]["listening"].append("tcp 0.0.0.0:4444 nc")
    proposed.write_text(json.dumps(data))
    code, out = _invoke(config, "baseline", "approve", digest)
    assert code == 1
    assert "changed since it was shown" in out
    assert not (tmp_path / "state" / "baseline.json").exists()
    code, out = _invoke(config, "baseline", "show", "--proposed")
    new_digest = out.split()[-1]
    code, out = _invoke(config, "baseline", "approve", new_digest)
    assert code == 0, out
    code, out = _invoke(config, "baseline", "show")
    assert "tcp 0.0.0.0:4444 nc" in out


def test_run_without_a_baseline_alerts_once(config: Path, engine: sa.Engine) -> None:
    code, out = _invoke(config, "run")
    assert code == 0, out
    assert "ALERT\tops.baseline_missing\tports" in out
    code, out = _invoke(config, "run")
    assert "ongoing\tops.baseline_missing\tports" in out
    assert queued(engine) == [("ops.baseline_missing", "ports", "-")]


def test_a_state_dir_others_can_read_is_refused(config: Path, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o755)
    os.chmod(tmp_path / "state", 0o755)  # noqa: S103 - the unsafe mode under test
    code, out = _invoke(config, "run")
    assert code == 1
    assert "must not be accessible to group or others" in out


def test_an_unreachable_database_fails_the_run(tmp_path: Path) -> None:
    path = tmp_path / "watch.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\ndatabase_url = "sqlite:////nonexistent/dir/x.db"\n'
        'checks = ["logs"]\n'
        f'logs = {{ syslog = "{tmp_path / "syslog"}" }}\n'
    )
    code, out = _invoke(path, "run")  # the missing syslog is a finding, and it cannot be queued
    assert code == 1
    assert "the pass did not complete: OperationalError" in out
    # Nothing was remembered: the next pass tries to queue the same alert again.
    assert not (tmp_path / "state" / "open-findings.json").exists()


def test_bad_settings_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "watch.toml"
    path.write_text("state_dir = [")
    code, out = _invoke(path, "run")
    assert code == 1
    assert out.startswith("Error: ")


def test_a_second_pass_waits_for_the_first(config: Path, tmp_path: Path, engine: sa.Engine) -> None:
    # The frequent and the slow timer share the state: while one pass holds the lock, the other
    # waits instead of overwriting its open findings and offsets.
    state = StateDir(tmp_path / "state")
    with state.locked():
        proc = subprocess.Popen(
            [*_isolated(), sys.executable, "-m", "ops.watch", "--config", str(config), "run"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        assert proc.returncode is None  # still waiting for the lock
        assert queued(engine) == []
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "ops.baseline_missing" in out
