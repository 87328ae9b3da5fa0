"""First boot of the installed server, as the runbook tells the keyd operator to do it."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.system import alarms, operator
from tests.system.alarms import record_timing
from tests.system.operator import Browser, Person
from tests.system.server import Server


def test_the_web_app_answers_and_keyd_is_sealed_until_two_custodians_unseal(
    server: Server, custodian_shares: list[str]
) -> None:
    c = server.container
    # The install leaves keyd without a key state: the ceremony is the custodians', not a script's.
    assert c.run(["test", "-e", "/var/lib/strongroom-keyd/state.json"], check=False).returncode != 0
    assert c.unit_state("strongroom-keyd") != "active"
    started = time.monotonic()
    custodian_shares[:] = operator.key_ceremony(c)
    record_timing("first boot: keyd init, 3 shares handed out", time.monotonic() - started)
    assert len(set(custodian_shares)) == len(operator.CUSTODIANS)

    # A (re)started keyd is sealed, whatever it was before: the key lives in its memory only.
    c.run(["systemctl", "stop", "strongroom-keyd"])
    operator.start_keyd(c)
    assert operator.is_sealed(c) is True
    started = time.monotonic()
    # The first custodian by hand (the runbook's fallback: the drop file), the second with the command.
    operator.drop_secret(c, custodian_shares[0])
    deadline = time.monotonic() + 10
    while "shares: 1 of 2 received" not in (status := operator.keyd_status(c)).stdout:
        assert time.monotonic() < deadline, status.stdout
        time.sleep(0.25)
    assert status.returncode == 3, status  # still sealed: one share is not the key
    assert c.run(["test", "-e", operator.DROP], check=False).returncode != 0, "keyd left the drop file"
    done = operator.deliver_share(c, custodian_shares[1])
    assert done.returncode == 0, done
    assert "sealed: false" in done.stdout.splitlines(), done.stdout
    assert operator.is_sealed(c) is False
    seconds = time.monotonic() - started
    record_timing("first boot: first share to unsealed", seconds)
    assert seconds < 10


def test_an_employee_logs_in_through_the_front_door(unsealed: Server, people: dict[str, Person]) -> None:
    browser = Browser(unsealed, people["carol"])
    assert browser.login().status == 302
    home = browser.get("/")
    assert home.status == 200, home.body[:500]


def test_the_admin_console_shows_what_the_crl_apache_enforces_says(
    unsealed: Server, people: dict[str, Person], tmp_path: Path
) -> None:
    """The seam between the installer and the web app: the CRL copied for Apache is also the one
    the console reads (webapp.env names it, the web app's AppArmor profile lets it read it), so a
    bound certificate shows as "not revoked", not "unknown"."""
    admin = operator.add_person(unsealed, tmp_path, "erin", "admin")
    browser = Browser(unsealed, admin)
    assert browser.login().status == 302
    page = browser.get("/admin/users")
    assert page.status == 200, page.body[:500]
    assert '<span class="crl-not_revoked">not revoked</span>' in page.body, page.body[:2000]
    assert "crl-unknown" not in page.body


def test_the_watchdog_passes_quietly_on_the_approved_baseline(alerting: Server) -> None:
    c = alerting.container
    before = {a.login: len(c.mails(a.login)) for a in alerting.admins.values()}
    found = {}
    for unit in ("strongroom-watch.service", "strongroom-watch-slow.service"):
        result = operator.watch_pass(c, unit)
        assert result.returncode == 0, c.journal(unit)[-3000:]
        found[unit] = alarms.pass_alerts(c, unit)  # what a pass that was not quiet found, by name
    time.sleep(5)  # two mailer passes
    assert {a.login: len(c.mails(a.login)) for a in alerting.admins.values()} == before, (
        found, [operator.subjects(c, a.login) for a in alerting.admins.values()]
    )  # fmt: skip
    # Everything mailed up to here was caused by what the test itself did, and says so.
    expected = {
        "user added",  # the admin added carol and dave
        "client certificate bound to a user",  # ... and bound their certificates
        "off-hours login",  # carol logged in (the suite may run at any hour)
        "ops.keyd_hardening_degraded",  # this container cannot grant keyd's memlock (conftest.alerting)
    }
    for admin in alerting.admins.values():
        kinds = {re.sub(r"^Strongroom: | \(\d+ events\)$", "", s) for s in operator.subjects(c, admin.login)}
        assert kinds <= expected, kinds - expected
