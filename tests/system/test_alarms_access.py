"""The access alarms of issue 13, each triggered as it really happens and proven by mail to both admins.

- SSH: a key an intruder added for alice without a KEYHOLDER option mails at once (the sshd session
  hook, hardening/ssh/session_hook.py, through the local postfix); alice's own KEYHOLDER key does not.
- The web app: a login (right and wrong password) outside the working hours, an employee spending
  keyd's decrypt budget, keyd stopped while an employee opens the vault's page: the event goes to the
  outbox with the action and the mailer (every 2 s here, 60 s as shipped) mails it.
- Apache: a request ModSecurity blocks, a method the vhost does not allow (405): the watchdog's pass
  (every 5 minutes as shipped, run at once here) finds them in Apache's error log.

Every setting changed for a scenario (the install's settings file, keyd.toml, an authorized_keys
file) is changed the way an admin would, on the server, and put back byte for byte afterwards; keyd is
left unsealed.
Timings (trigger to the last admin's mail) go to test-artifacts/system/timings.json.
"""

from __future__ import annotations

import email
import email.policy
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support import made_up_pan
from tests.system import alarms, operator
from tests.system.container import Container
from tests.system.operator import Browser, Person
from tests.system.server import Server

WEBAPP_ENV = "/etc/strongroom/webapp.env"
SSH_KEYS = "/etc/ssh/authorized_keys/alice"
SSH_SUBJECT = re.compile(r"Strongroom: SSH session with an unidentified key on \S+")
# The hook's mail names user, key fingerprint, client address, session kind and reason (by design,
# hardening/ssh/session_hook.py), never the command or any key material.
SSH_BODY = re.compile(
    r"An SSH session started without a registered KEYHOLDER\. Check the server\.\n\n"
    r"host: \S+\nuser: alice\nkey: SHA256:[A-Za-z0-9+/]{43}\nfrom: [0-9a-f.:]+\nsession: command\n"
    r"reason: [^\n]+\ntime: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n"
)


KEYD_TOML = "/etc/strongroom/keyd.toml"
UNITS = ("strongroom-web", "strongroom-mail", "strongroom-keyd", "apache2", "ssh", "postfix")
FOUND: dict[str, str] = {}


def settings_state(c: Container) -> dict[str, str]:
    """The files the scenarios change, with owner and mode, and the services they restart."""
    state = {p: c.run(["sh", "-c", f"stat -c %U:%G:%a {p}; sha256sum < {p}"]).stdout for p in
             (WEBAPP_ENV, KEYD_TOML, SSH_KEYS)}  # fmt: skip
    return state | {u: c.unit_state(u) for u in UNITS}


@pytest.fixture(scope="module", autouse=True)
def found(alerting: Server) -> None:
    FOUND.update(settings_state(alerting.container))


@contextmanager
def edited(c: Container, path: str, extra: str, *restart: str) -> Iterator[None]:
    """Lines appended to a settings file on the server, the units restarted; the exact old bytes back after.

    Rewritten in place (`cat >`), as an editor does: owner and mode stay the file's own, and no copy
    of a file holding secrets is left anywhere on the disk.
    """
    original = c.read_file(path).decode()
    c.run(["sh", "-c", f"cat >> {path}"], input=extra)
    try:
        for unit in restart:
            c.run(["systemctl", "restart", unit], timeout=120)
        yield
    finally:
        c.run(["sh", "-c", f"cat > {path}"], input=original)
        for unit in restart:
            c.run(["systemctl", "restart", unit], timeout=120)


def wait_web(server: Server, person: Person, timeout: float = 60) -> None:
    """After a restart, gunicorn binds its socket a moment after systemd says it started."""
    deadline = time.monotonic() + timeout
    while (answer := Browser(server, person).get("/login")).status in (0, 502, 503):
        assert time.monotonic() < deadline, f"the web app did not come back: {answer.status} {answer.error}"
        time.sleep(0.5)


def is_ssh_alert(message: EmailMessage) -> bool:
    return SSH_SUBJECT.fullmatch(str(message["Subject"])) is not None


def without_mta_stamp(message: EmailMessage) -> EmailMessage:
    """The mail as its sender wrote it. The hook sets no Message-ID, so postfix adds one that starts with
    a 14-digit timestamp (`<20261205234233.849C82208C0@host>`): Luhn-valid one time in ten, it reads as
    a card number to the scan, yet it is the MTA's, not the hook's text."""
    copy = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(copy, EmailMessage)
    del copy["Message-Id"]
    return copy


# -- SSH: the door for the admins ---------------------------------------------------------------------


def ssh(server: Server, key: Path, known_hosts: Path, command: str) -> subprocess.CompletedProcess[str]:
    return server.network.client("admins", [
        "ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=10", "-i", str(key),
        f"alice@{server.address('admins')}", command,
    ], check=False, timeout=60)  # fmt: skip


def test_the_admins_own_keyholder_key_logs_in_without_an_alarm(alerting: Server, tmp_path: Path) -> None:
    c = alerting.container
    marks = alarms.mark(alerting)
    token = secrets.token_hex(8)
    done = ssh(alerting, alerting.admins["alice"].private_key, tmp_path / "known_hosts", f"echo ok-{token}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ok-{token}"
    time.sleep(5)  # the hook mails before the session starts: a mail would be there by now
    for login in alarms.admins(alerting):
        assert not any(is_ssh_alert(m) for m in c.mails(login)[marks[login] :])


def test_a_login_with_a_key_added_without_keyholder_mails_both_admins(
    alerting: Server, tmp_path: Path
) -> None:
    """An intruder with root for a moment appends his own key to alice's root-owned key file."""
    c = alerting.container
    intruder = tmp_path / "intruder_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "intruder", "-f", str(intruder)],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    public = intruder.with_suffix(".pub").read_text().strip()
    token = secrets.token_hex(8)
    with edited(c, SSH_KEYS, public + "\n"):
        marks = alarms.mark(alerting)
        started = time.monotonic()
        done = ssh(alerting, intruder, tmp_path / "known_hosts", f"echo harmless-{token}")
        assert done.returncode == 0, done.stderr  # the session goes on: the alarm rings, the door stays
        assert done.stdout.strip() == f"harmless-{token}"
        forbidden = [token, "echo", public.split()[1], "PRIVATE KEY", intruder.read_text().splitlines()[1]]
        for login in alarms.admins(alerting):
            left = max(1.0, started + 60 - time.monotonic())
            message, _ = c.wait_for_mail(login, after=marks[login], match=is_ssh_alert, timeout=left)
            assert SSH_BODY.fullmatch(alarms.body_text(message)), alarms.body_text(message)
            alarms.assert_bare(without_mta_stamp(message), forbidden)
        seconds = time.monotonic() - started
    alarms.record_timing("ssh_without_keyholder", seconds)
    assert c.read_file(SSH_KEYS).decode().count("\n") == 1, "the intruder's key was not removed"


# -- the web app: off hours -----------------------------------------------------------------------------


@contextmanager
def settings_with(server: Server, extra: str) -> Iterator[None]:
    """Lines appended to the install's settings file and the install command run, as an admin changes
    a web app setting (docs/deploy.md, [webapp]); the exact old file back and the install run again."""
    c = server.container
    original = c.read_file(server.settings_path).decode()
    c.run(["sh", "-c", f"cat >> {server.settings_path}"], input=extra)
    try:
        server.install()
        yield
    finally:
        c.run(["sh", "-c", f"cat > {server.settings_path}"], input=original)
        server.install()


@pytest.fixture
def off_hours(alerting: Server, people: dict[str, Person]) -> Iterator[Server]:
    """Working hours set (the settings file's [webapp], docs/deploy.md) to half an hour two hours from
    now, every day."""
    start = (datetime.now(UTC).hour + 2) % 24
    extra = (
        "\n# Changed for a test: now is outside the working hours.\n[webapp]\n"
        f'WORKING_HOURS = "{start:02d}:00-{start:02d}:30"\n'
        'WORKING_DAYS = "mon-sun"\nWORKING_TIMEZONE = "UTC"\n'
    )
    with settings_with(alerting, extra):
        env = alerting.container.read_file(WEBAPP_ENV).decode()
        assert f"STRONGROOM_WORKING_HOURS={start:02d}:00-{start:02d}:30\n" in env
        wait_web(alerting, people["carol"])
        yield alerting
    wait_web(alerting, people["carol"])


@pytest.mark.parametrize("right_password", [True, False], ids=["success", "failure"])
def test_a_login_at_off_hours_mails_both_admins(
    off_hours: Server, people: dict[str, Person], right_password: bool
) -> None:
    carol = people["carol"]
    wrong = "Wrong-" + secrets.token_urlsafe(12)
    marks = alarms.mark(off_hours)
    started = time.monotonic()
    answer = Browser(off_hours, carol).login(password=None if right_password else wrong)
    assert answer.status == (302 if right_password else 200), answer.body[:300]
    seconds = alarms.expect_alert(off_hours, marks, "off-hours login", started,
                                  forbidden=[carol.password, wrong, "carol"])  # fmt: skip
    alarms.record_timing(f"login_off_hours_{'success' if right_password else 'failure'}", seconds)


# -- the web app: the decrypt budget ------------------------------------------------------------------

BUDGET = 2  # decrypts per employee per minute (keyd.toml; shipped: keyd's default, 30)


@pytest.fixture
def small_budget(alerting: Server, custodian_shares: list[str]) -> Iterator[Server]:
    """keyd's per-employee budget lowered in keyd.toml (docs/keyd.md); keyd restarted, so unsealed again."""
    c = alerting.container
    extra = f"\n# Changed for a test: a small decrypt budget.\n[budgets.employee]\nminute = {BUDGET}\n"
    try:
        with edited(c, KEYD_TOML, extra):
            c.run(["systemctl", "stop", "strongroom-keyd"], timeout=60)
            operator.unseal(c, [custodian_shares[0], custodian_shares[2]])
            yield alerting
            c.run(["systemctl", "stop", "strongroom-keyd"], timeout=60)
    finally:
        operator.unseal(c, custodian_shares[:2])


def add_record_with_card(browser: Browser, pan: str) -> tuple[str, str]:
    """(record path, the card's reveal path) as the employee makes them through the forms."""
    token = browser.csrf("/records/")
    crm = "C" + "".join(secrets.choice("0123456789") for _ in range(8))
    added = browser.request("POST", "/records/", form={"csrf_token": token, "crm_ref": crm})
    assert added.status == 302, added.body[:300]
    record = (added.header("Location") or "").removeprefix(f"https://{browser.server.hostname}")
    assert re.fullmatch(r"/records/\d+", record), record
    card = browser.request("POST", f"{record}/cards", form={
        "csrf_token": browser.csrf(record), "pan": pan, "cardholder": "Ada Lovelace",
        "exp_month": "12", "exp_year": str(datetime.now(UTC).year + 3),
    })  # fmt: skip
    assert card.status == 302, card.body[:500]
    page = browser.get(record)
    reveal = re.search(rf"{record}/reveal/card/[^/\"]+/pan", page.body)
    assert reveal is not None, page.body[:1000]
    return record, reveal.group(0)


def reveal(browser: Browser, path: str, password: str, reason: str) -> operator.Response:
    form = browser.get(path)
    assert form.status == 200, form.body[:300]
    fields = {
        m.group(1): m.group(0)
        for m in re.finditer(r'<input[^>]* name="([a-z_]+)"[^>]*>', form.body.split("<main>", 1)[-1])
    }
    values = {
        name: found.group(1) for name, tag in fields.items() if (found := re.search(r' value="([^"]*)"', tag))
    }
    # The password box, whatever the form calls it: a browser fills the one of type password.
    secret = [name for name, tag in fields.items() if ' type="password"' in tag]
    assert len(secret) == 1, fields
    assert values.get("csrf_token"), fields
    assert values.get("stepup"), fields
    return browser.request("POST", path, form={
        "csrf_token": values["csrf_token"], "stepup": values["stepup"], "reason": reason, secret[0]: password,
    })  # fmt: skip


def test_an_employee_spending_the_decrypt_budget_mails_both_admins(
    small_budget: Server, people: dict[str, Person]
) -> None:
    server, c = small_budget, small_budget.container
    dave = people["dave"]
    browser = Browser(server, dave)
    assert browser.login().status == 302
    pan = made_up_pan()
    _record, path = add_record_with_card(browser, pan)
    reason = "customer called about a disputed charge"
    marks = alarms.mark(server)
    statuses: list[int] = []
    answer = None
    # Minute windows are aligned to the clock: one boundary crossed midway grants BUDGET more at most.
    while 429 not in statuses and len(statuses) < 2 * BUDGET + 2:
        started = time.monotonic()
        answer = reveal(browser, path, dave.password, reason)
        statuses.append(answer.status)
    assert answer is not None
    assert statuses[-1] == 429, (statuses, re.findall(r"Refused: [^<]*", answer.body))
    assert set(statuses[:-1]) == {200}, statuses
    forbidden = [pan, pan[-8:], dave.password, reason, "dave"]
    seconds = alarms.expect_alert(server, marks, "reveal budget exhausted", started, forbidden=forbidden)
    alarms.record_timing("reveal_budget_exceeded", seconds)
    # keyd's own event of the same refusal, from its spool, at the watchdog's next pass.
    marks, started = alarms.mark(server), time.monotonic()
    assert operator.watch_pass(c).returncode == 0, c.journal("strongroom-watch.service")[-3000:]
    assert "ops.keyd_budget_exceeded" in [e for e, _ in alarms.pass_alerts(c)], alarms.pass_alerts(c)
    seconds = alarms.expect_alert(server, marks, "ops.keyd_budget_exceeded", started, forbidden=forbidden)
    alarms.record_timing("keyd_budget_exceeded_after_watch_pass", seconds)


# -- Apache: ModSecurity and methods --------------------------------------------------------------------

SQLI = "/login?q=1%27%20OR%20%271%27%3D%271"


def test_modsecurity_blocking_an_attack_mails_both_admins(
    alerting: Server, people: dict[str, Person]
) -> None:
    c = alerting.container
    marks = alarms.mark(alerting)
    started = time.monotonic()
    answer = Browser(alerting, people["carol"]).get(SQLI)
    assert answer.status == 403, (answer.status, answer.body[:300])
    assert operator.watch_pass(c).returncode == 0, c.journal("strongroom-watch.service")[-3000:]
    assert ("ops.modsecurity_blocked", "apache_error") in alarms.pass_alerts(c), alarms.pass_alerts(c)
    forbidden = ["' OR '", "%27", "q=1", "942100", "949110", "192.0.2."]
    seconds = alarms.expect_alert(alerting, marks, "ops.modsecurity_blocked", started, forbidden=forbidden)
    alarms.record_timing("modsecurity_blocked_after_watch_pass", seconds)


def test_an_unexpected_http_method_mails_both_admins(alerting: Server, people: dict[str, Person]) -> None:
    """Refused by the vhost's AllowMethods (405, AH01623 in Apache's error log): new data in a quiet
    log, `ops.log_new` for `apache_error`."""
    c = alerting.container
    browser = Browser(alerting, people["carol"])
    marks = alarms.mark(alerting)
    started = time.monotonic()
    for method in ("TRACE", "PUT", "DELETE"):
        answer = browser.request(method, "/login")
        assert answer.status == 405, (method, answer.status, answer.body[:300])
    assert operator.watch_pass(c).returncode == 0, c.journal("strongroom-watch.service")[-3000:]
    assert ("ops.log_new", "apache_error") in alarms.pass_alerts(c), alarms.pass_alerts(c)
    seconds = alarms.expect_alert(alerting, marks, "ops.log_new", started,
                                  forbidden=["TRACE", "PUT", "DELETE", "AH01623", "/login"])  # fmt: skip
    alarms.record_timing("unexpected_method_after_watch_pass", seconds)


# -- an error page shown to an employee ------------------------------------------------------------


def test_an_error_page_shown_to_an_employee_mails_both_admins(
    alerting: Server, people: dict[str, Person], custodian_shares: list[str]
) -> None:
    """keyd stops while an employee works: the vault's page is a 503 and `error.vault_unavailable`."""
    c = alerting.container
    browser = Browser(alerting, people["carol"])
    assert browser.login().status == 302
    assert browser.get("/").status == 200
    try:
        c.run(["systemctl", "stop", "strongroom-keyd"], timeout=60)
        marks = alarms.mark(alerting)
        started = time.monotonic()
        page = browser.get("/")
        assert page.status == 503, (page.status, page.body[:300])
        seconds = alarms.expect_alert(alerting, marks, "key daemon unreachable", started,
                                      forbidden=["carol", "keyd.sock"])  # fmt: skip
    finally:
        operator.unseal(c, [custodian_shares[2], custodian_shares[1]])
    alarms.record_timing("error_page_vault_unavailable", seconds)
    assert browser.get("/").status == 200


# -- what the scenarios found and left ------------------------------------------------------------


def test_a_hand_edit_of_webapp_env_is_reported_by_check_and_reverted_by_the_install(
    alerting: Server, people: dict[str, Person]
) -> None:
    """The settings file is the one source of webapp.env: an edit by hand is drift, and the next
    install run puts the file back as the settings say (docs/deploy.md)."""
    c = alerting.container
    before = c.read_file(WEBAPP_ENV)
    assert before.count(b"STRONGROOM_SECRET_KEY=") == 1
    c.run(["sh", "-c", f"cat >> {WEBAPP_ENV}"], input="STRONGROOM_WORKING_DAYS=sat-sun\n")
    try:
        check = alerting.install("--check", check=False)
        assert check.returncode == 1, check.stdout + check.stderr
        assert f"drift: {WEBAPP_ENV}" in check.stdout.splitlines(), check.stdout
    finally:
        done = alerting.install()
    assert f"changed: {WEBAPP_ENV}" in done.stdout.splitlines(), done.stdout
    assert c.read_file(WEBAPP_ENV) == before
    wait_web(alerting, people["carol"])


def test_the_server_is_left_as_found(alerting: Server) -> None:
    c = alerting.container
    assert settings_state(c) == FOUND
    assert {FOUND[u] for u in UNITS} == {"active"}, FOUND
    assert operator.is_sealed(c) is False
