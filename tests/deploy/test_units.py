"""The systemd units: systemd accepts them, they carry the sandboxing docs/deploy.md promises (keyd:
Unix sockets only, no capabilities, no way to gain any), `systemd-analyze security` rates them, and
their paths agree with keyd's, the web app's and Apache's own defaults."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from keyd.config import Config
from keyd.state import StateStore
from tests.support import need_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = (
    "strongroom-keyd.service",
    "strongroom-web.service",
    "strongroom-mail.service",
    "strongroom-outbox-prune.service",
    "strongroom-purge-retired.service",
)
TIMERS = ("strongroom-outbox-prune.timer", "strongroom-purge-retired.timer")


def options(unit: str) -> dict[str, list[str]]:
    """Key -> every value given (systemd allows repeats), continuation lines joined."""
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / unit).read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def checkout_copies(tmp_path: Path) -> list[Path]:
    # Installed under /opt/strongroom; here the checkout stands in so ExecStart= paths exist.
    copies = []
    for unit in UNITS + TIMERS:
        copy = tmp_path / unit
        copy.write_text((DEPLOY / unit).read_text().replace("/opt/strongroom", str(ROOT)))
        copies.append(copy)
    return copies


def test_units_verify(tmp_path: Path) -> None:
    analyze = need_binary("systemd-analyze")
    res = subprocess.run(
        [analyze, "verify", *map(str, checkout_copies(tmp_path))], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr


COMMON = {
    "NoNewPrivileges": ["yes"],
    "CapabilityBoundingSet": [""],
    "AmbientCapabilities": [""],
    "ProtectSystem": ["strict"],
    "ProtectHome": ["yes"],
    "PrivateTmp": ["yes"],
    "PrivateDevices": ["yes"],
    "PrivateMounts": ["yes"],
    "ProtectKernelTunables": ["yes"],
    "ProtectKernelModules": ["yes"],
    "ProtectKernelLogs": ["yes"],
    "ProtectControlGroups": ["yes"],
    "ProtectClock": ["yes"],
    "ProtectHostname": ["yes"],
    "ProtectProc": ["invisible"],
    "RestrictNamespaces": ["yes"],
    "RestrictRealtime": ["yes"],
    "RestrictSUIDSGID": ["yes"],
    "LockPersonality": ["yes"],
    "MemoryDenyWriteExecute": ["yes"],
    "SystemCallArchitectures": ["native"],
    "UMask": ["0077"],
    "LimitCORE": ["0"],
    "IPAddressDeny": ["any"],
}
SPECIFIC: list[tuple[str, str, list[str] | None]] = [
    ("strongroom-keyd.service", "SystemCallFilter", ["@system-service", "~@privileged"]),
    ("strongroom-web.service", "SystemCallFilter", ["@system-service", "~@privileged", "@chown"]),
    ("strongroom-mail.service", "SystemCallFilter", ["@system-service", "~@privileged"]),
    ("strongroom-keyd.service", "User", ["strongroom-keyd"]),
    ("strongroom-keyd.service", "Group", ["strongroom-keyd-clients"]),
    ("strongroom-keyd.service", "RestrictAddressFamilies", ["AF_UNIX"]),
    ("strongroom-keyd.service", "PrivateNetwork", ["yes"]),
    ("strongroom-keyd.service", "RuntimeDirectory", ["strongroom-keyd"]),
    ("strongroom-keyd.service", "RuntimeDirectoryMode", ["0750"]),
    ("strongroom-keyd.service", "StateDirectory", ["strongroom-keyd"]),
    ("strongroom-keyd.service", "StateDirectoryMode", ["0700"]),
    ("strongroom-keyd.service", "LimitMEMLOCK", ["infinity"]),
    ("strongroom-keyd.service", "MemorySwapMax", ["0"]),
    ("strongroom-keyd.service", "AppArmorProfile", ["strongroom-keyd"]),
    ("strongroom-keyd.service", "ReadWritePaths", None),
    ("strongroom-web.service", "User", ["strongroom-web"]),
    ("strongroom-web.service", "SupplementaryGroups", ["strongroom-keyd-clients"]),
    ("strongroom-web.service", "RestrictAddressFamilies", ["AF_UNIX"]),
    ("strongroom-web.service", "PrivateNetwork", ["yes"]),
    ("strongroom-web.service", "ReadWritePaths", ["/run/strongroom-web"]),
    ("strongroom-web.service", "StateDirectory", ["strongroom-web"]),
    ("strongroom-web.service", "StateDirectoryMode", ["0700"]),
    ("strongroom-web.service", "AppArmorProfile", ["strongroom-web"]),
    ("strongroom-web.service", "Type", ["notify"]),
    ("strongroom-mail.service", "User", ["strongroom-web"]),
    ("strongroom-mail.service", "RestrictAddressFamilies", ["AF_UNIX AF_INET AF_INET6"]),
    ("strongroom-mail.service", "IPAddressAllow", ["localhost"]),
    ("strongroom-mail.service", "SupplementaryGroups", None),
    ("strongroom-mail.service", "ReadWritePaths", ["/var/lib/strongroom-web/alert-spool"]),
    ("strongroom-mail.service", "AppArmorProfile", ["strongroom-mail"]),
    ("strongroom-outbox-prune.service", "User", ["strongroom-web"]),
    ("strongroom-outbox-prune.service", "Type", ["oneshot"]),
    ("strongroom-outbox-prune.service", "RestrictAddressFamilies", ["AF_UNIX"]),
    ("strongroom-outbox-prune.service", "PrivateNetwork", ["yes"]),
    ("strongroom-outbox-prune.service", "ReadWritePaths", None),
    ("strongroom-outbox-prune.service", "SystemCallFilter", ["@system-service", "~@privileged"]),
    (
        "strongroom-outbox-prune.service",
        "EnvironmentFile",
        ["/etc/strongroom/webapp.env", "/etc/strongroom/outbox-prune.env"],
    ),
    (
        "strongroom-outbox-prune.service",
        "ExecStart",
        ["/opt/strongroom/.venv/bin/flask --app webapp mail prune"],
    ),
    ("strongroom-purge-retired.service", "User", ["strongroom-web"]),
    ("strongroom-purge-retired.service", "Type", ["oneshot"]),
    ("strongroom-purge-retired.service", "RestrictAddressFamilies", ["AF_UNIX"]),
    ("strongroom-purge-retired.service", "PrivateNetwork", ["yes"]),
    ("strongroom-purge-retired.service", "ReadWritePaths", None),
    ("strongroom-purge-retired.service", "SystemCallFilter", ["@system-service", "~@privileged"]),
    (
        "strongroom-purge-retired.service",
        "EnvironmentFile",
        ["/etc/strongroom/webapp.env", "/etc/strongroom/purge-retired.env"],
    ),
    (
        "strongroom-purge-retired.service",
        "ExecStart",
        ["/opt/strongroom/.venv/bin/flask --app webapp records purge-retired"],
    ),
    (
        "strongroom-purge-retired.service",
        "ConditionPathExists",
        ["/etc/strongroom/webapp.env", "/etc/strongroom/purge-retired.env"],
    ),
    (
        "strongroom-outbox-prune.service",
        "ConditionPathExists",
        ["/etc/strongroom/webapp.env", "/etc/strongroom/outbox-prune.env"],
    ),
]
TABLE = [(u, k, v) for u in UNITS for k, v in COMMON.items()] + SPECIFIC


@pytest.mark.parametrize(("unit", "key", "want"), TABLE, ids=[f"{u}:{k}" for u, k, _ in TABLE])
def test_sandboxing_option(unit: str, key: str, want: list[str] | None) -> None:
    assert options(unit).get(key) == want


@pytest.mark.parametrize("unit", UNITS)
def test_left_out_on_purpose(unit: str) -> None:
    opts = options(unit)
    # PrivateUsers would show every other uid as nobody: keyd's SO_PEERCRED check would refuse the
    # web app (and admit nobody else either); the web app's peers would look the same.
    assert "PrivateUsers" not in opts
    # No root phase: nothing runs with privileges ("+" or "!" prefixes, PermissionsStartOnly).
    for key in ("ExecStartPre", "ExecStartPost", "PermissionsStartOnly"):
        assert key not in opts
    assert opts["User"] != ["root"]


@pytest.mark.parametrize(
    ("unit", "limit"),
    [(UNITS[0], 1.0), (UNITS[1], 1.0), (UNITS[2], 1.5), (UNITS[3], 1.0), (UNITS[4], 1.0)],
)
def test_security_exposure(tmp_path: Path, unit: str, limit: float) -> None:
    analyze = need_binary("systemd-analyze")
    copy = next(c for c in checkout_copies(tmp_path) if c.name == unit)
    res = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m is not None, res.stdout + res.stderr
    assert float(m[1]) <= limit


def test_paths_agree_with_the_components() -> None:
    web = options("strongroom-web.service")
    site = (ROOT / "apache/strongroom-site.conf").read_text()
    socket = re.search(r"Define STRONGROOM_WEB_SOCKET (\S+)", site)
    assert socket is not None
    assert f"STRONGROOM_BIND=unix:{socket[1]}" in " ".join(web["Environment"]).split()
    assert "STRONGROOM_BEHIND_PROXY=true" in " ".join(web["Environment"]).split()
    assert web["ExecStart"] == [
        "/opt/strongroom/.venv/bin/gunicorn -c /opt/strongroom/webapp/gunicorn_conf.py"
    ]
    assert socket[1].startswith(web["ReadWritePaths"][0] + "/")
    tmpfiles = (DEPLOY / "strongroom-tmpfiles.conf").read_text()
    assert f"d {web['ReadWritePaths'][0]} 0710 strongroom-web www-data -" in tmpfiles
    keyd = options("strongroom-keyd.service")
    defaults = Config()
    assert f"/run/{keyd['RuntimeDirectory'][0]}" == str(defaults.socket.parent)
    assert f"/var/lib/{keyd['StateDirectory'][0]}" == str(defaults.state_dir)
    assert keyd["ExecStart"] == [
        "/opt/strongroom/.venv/bin/python -m keyd serve --config /etc/strongroom/keyd.toml"
    ]
    # The drop file stays visible: PrivateDevices keeps the host's /dev/shm, nothing hides it.
    assert str(defaults.drop_path).startswith("/dev/shm/")
    for key in ("InaccessiblePaths", "TemporaryFileSystem", "BindPaths"):
        assert key not in keyd


def test_keyd_is_skipped_not_failed_before_init() -> None:
    """Before `keyd init` there is no state: the unit's condition skips it (no failed unit on a fresh
    install); the condition names exactly the file keyd reads its state from."""
    conditions = options("strongroom-keyd.service")["ConditionPathExists"]
    state = StateStore(Config().state_dir)
    assert str(state.path) in conditions
    assert "/etc/strongroom/keyd.toml" in conditions


@pytest.mark.parametrize(
    ("timer", "when"),
    [("strongroom-outbox-prune.timer", "03:30:00"), ("strongroom-purge-retired.timer", "03:45:00")],
)
def test_a_nightly_job_timer_starts_its_job_daily(timer: str, when: str) -> None:
    opts = options(timer)
    assert opts["OnCalendar"] == [f"*-*-* {when} UTC"]
    assert opts["Persistent"] == ["true"]
    assert opts["WantedBy"] == ["timers.target"]
    assert opts.get("Unit") is None  # the service of the same name
    assert (DEPLOY / timer.replace(".timer", ".service")).is_file()


def test_the_alert_spool_is_where_the_web_app_writes_and_the_mailer_may_delete() -> None:
    from webapp.mail.spool import spool_path

    for unit in ("strongroom-web.service", "strongroom-mail.service"):
        env = " ".join(options(unit)["Environment"]).split()
        instance = next(e.split("=", 1)[1] for e in env if e.startswith("STRONGROOM_INSTANCE_PATH="))
        assert str(spool_path({}, instance)) == "/var/lib/strongroom-web/alert-spool"
    assert options("strongroom-mail.service")["ReadWritePaths"] == ["/var/lib/strongroom-web/alert-spool"]
    tmpfiles = (DEPLOY / "strongroom-tmpfiles.conf").read_text()
    assert "d /var/lib/strongroom-web/alert-spool 0700 strongroom-web strongroom-web -" in tmpfiles
