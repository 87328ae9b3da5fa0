"""The nightly jobs on an installed server: the outbox prune and the purge of retired cards. Their
timers are enabled, their units' conditions hold (the env files the install wrote), and each job,
started as its timer would, runs to success as its own least-privileged database user."""

from __future__ import annotations

import pytest

from tests.system.server import Server

# unit -> (env file, the database user its URL names)
JOBS = {
    "strongroom-outbox-prune": ("/etc/strongroom/outbox-prune.env", "strongroom_prune"),
    "strongroom-purge-retired": ("/etc/strongroom/purge-retired.env", "strongroom_purge"),
}


def _show(server: Server, unit: str, *props: str) -> dict[str, str]:
    out = server.container.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.parametrize("job", sorted(JOBS))
def test_the_timer_is_enabled_and_waiting(server: Server, job: str) -> None:
    c = server.container
    assert c.run(["systemctl", "is-enabled", f"{job}.timer"], check=False).stdout.strip() == "enabled"
    assert c.unit_state(f"{job}.timer") == "active"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_the_env_file_is_roots_and_names_the_jobs_own_user(server: Server, job: str) -> None:
    path, user = JOBS[job]
    c = server.container
    assert c.run(["stat", "-c", "%U:%G %a", path]).stdout.strip() == "root:root 600"
    assert f"mysql+pymysql://{user}:" in c.read_file(path).decode()


def test_both_jobs_start_and_succeed(server: Server) -> None:
    c = server.container
    units = [f"{job}.service" for job in sorted(JOBS)]
    c.run(["systemctl", "start", *units], timeout=300)
    for unit in units:
        # A oneshot whose condition fails is "started" too: the condition and the result say it ran.
        state = _show(server, unit, "ConditionResult", "Result", "ExecMainStatus")
        assert state == {"ConditionResult": "yes", "Result": "success", "ExecMainStatus": "0"}, (
            unit,
            state,
            c.journal(unit),
        )
    assert "purged: cards=0 items=0" in c.journal("strongroom-purge-retired.service")
    assert "pruned 0 sent row(s)" in c.journal("strongroom-outbox-prune.service")
