"""The settings file's [webapp] table (deploy/server/settings.py) and what the install writes from it
into webapp.env (deploy/server/steps.py): names checked against the web app's own list, the
installer's own names refused, values rendered only when systemd reads them back literally, the web
app's own loader asked about the values, and the secret key written once, on its assignment line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.settings import SettingsError, parse, webapp_setting_names
from webapp import config

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = (ROOT / "deploy/server/server.toml.example").read_text()


def with_webapp(body: str) -> str:
    return EXAMPLE + "\n[webapp]\n" + body


def test_the_names_are_the_web_apps_own() -> None:
    assert webapp_setting_names() == frozenset(config.DEFAULTS)


def test_good_values_are_rendered_for_the_environment_file() -> None:
    s = parse(
        with_webapp(
            'WORKING_HOURS = "08:00-17:30"\nWORKING_TIMEZONE = "Europe/Paris"\nLOCKOUT_THRESHOLD = 5\n'
            "SESSION_BIND_IP = true\n"
            'REQUEST_BUDGETS = \'[{"scope": "total", "window": 3600, "alert": 10, "limit": null}]\'\n'
        )
    )
    assert dict(s.webapp) == {
        "WORKING_HOURS": "08:00-17:30",
        "WORKING_TIMEZONE": "Europe/Paris",
        "LOCKOUT_THRESHOLD": "5",
        "SESSION_BIND_IP": "true",
        "REQUEST_BUDGETS": '\'[{"scope": "total", "window": 3600, "alert": 10, "limit": null}]\'',
    }
    assert parse(EXAMPLE).webapp == ()


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('NO_SUCH_SETTING = "x"\n', "webapp.NO_SUCH_SETTING"),
        ('working_hours = "09:00-17:00"\n', "webapp.working_hours"),
        # The installer's own: generated secrets, the database, keyd, the mail path, production mode.
        ('SECRET_KEY = "' + "k" * 64 + '"\n', "webapp.SECRET_KEY"),
        ('DATABASE_URL = "sqlite:///x"\n', "webapp.DATABASE_URL"),
        ('KEYD_SOCKET = "/tmp/k.sock"\n', "webapp.KEYD_SOCKET"),
        ('MAIL_FROM = "x@example.org"\n', "webapp.MAIL_FROM"),
        ('ALERT_TO = "x@example.org"\n', "webapp.ALERT_TO"),
        ('SMTP_HOST = "mail.example.org"\n', "webapp.SMTP_HOST"),
        ('SMTP_PASSWORD_FILE = "/etc/x"\n', "webapp.SMTP_PASSWORD_FILE"),
        ('MODE = "development"\n', "webapp.MODE"),
        ("BEHIND_PROXY = false\n", "webapp.BEHIND_PROXY"),
        ('PROXY_IP_HEADER = "X-Forwarded-For"\n', "webapp.PROXY_IP_HEADER"),
        # Values systemd would not read back literally, or that would add a line.
        ('WORKING_DAYS = "mon-fri\\nSTRONGROOM_MODE=development"\n', "webapp.WORKING_DAYS"),
        ('WORKING_DAYS = "mon\\u0000fri"\n', "webapp.WORKING_DAYS"),
        ('WORKING_DAYS = "mon\\rfri"\n', "webapp.WORKING_DAYS"),
        ('WORKING_DAYS = "mon\\u2028fri"\n', "webapp.WORKING_DAYS"),
        ('WORKING_DAYS = "mon-fri\' x"\n', "webapp.WORKING_DAYS"),
        ('WORKING_DAYS = "mon-fri\\\\"\n', "webapp.WORKING_DAYS"),
        ('WORKING_DAYS = " mon-fri"\n', "webapp.WORKING_DAYS"),
        ('WORKING_DAYS = ""\n', "webapp.WORKING_DAYS"),
        ('WORKING_DAYS = "' + "a" * 2049 + '"\n', "webapp.WORKING_DAYS"),
        ("LOCKOUT_THRESHOLD = 1.5\n", "webapp.LOCKOUT_THRESHOLD"),
        ("LOCKOUT_THRESHOLD = 99999999999999999\n", "webapp.LOCKOUT_THRESHOLD"),
        ("LOCKOUT_THRESHOLD = [1]\n", "webapp.LOCKOUT_THRESHOLD"),
        ("LOCKOUT_THRESHOLD = {a = 1}\n", "webapp.LOCKOUT_THRESHOLD"),
        ('"STRONGROOM_MODE=development\\n" = 1\n', "webapp.(a malformed name)"),
    ],
)
def test_a_bad_webapp_setting_is_refused_by_its_key(body: str, key: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse(with_webapp(body))
    assert any(p.startswith(f"{key}: ") for p in err.value.problems), err.value.problems
    assert "development\n" not in str(err.value)


def test_webapp_must_be_a_table() -> None:
    with pytest.raises(SettingsError) as err:
        parse('webapp = "x"\n' + EXAMPLE)
    assert any(p.startswith("webapp: ") for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    ("values", "accepted"),
    [
        ((("WORKING_HOURS", "08:00-17:30"), ("WORKING_TIMEZONE", "Europe/Paris")), True),
        ((("WORKING_HOURS", "25:00-26:00"),), False),
        ((("WORKING_TIMEZONE", "Mars/Olympus"),), False),
        ((("LOCKOUT_THRESHOLD", "0"),), False),
        ((("SESSION_BIND_IP", "'maybe'"),), False),
        ((("REQUEST_BUDGETS", '\'[{"scope": "galaxy"}]\''),), False),
    ],
)
def test_the_web_apps_own_loader_judges_the_values(
    values: tuple[tuple[str, str], ...], accepted: bool
) -> None:
    message = steps.webapp_refuses(sys.executable, ROOT, values)
    assert (message == "") is accepted, message


def test_placeholders_are_filled_on_assignment_lines_only() -> None:
    secret = "s3cr3t-" + "x" * 60
    text = steps.fill_template((ROOT / "deploy/webapp.env.in").read_text(), {"SECRET_KEY": secret})
    assert text.count(secret) == 1
    assert f"STRONGROOM_SECRET_KEY={secret}\n" in text
    assert all(secret not in line for line in text.splitlines() if line.startswith("#"))


def test_install_sh_fills_the_secret_on_its_assignment_line_only() -> None:
    # The same sed expression deploy/install.sh runs on a first install.
    line = next(ln for ln in (ROOT / "deploy/install.sh").read_text().splitlines() if "@SECRET_KEY@" in ln)
    expr = re.search(r'sed "([^"]+)"', line)
    assert expr is not None, line
    secret = "s3cr3t" + "y" * 60
    out = subprocess.run(
        ["sed", expr.group(1).replace("$secret", secret), str(ROOT / "deploy/webapp.env.in")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.count(secret) == 1
    assert f"STRONGROOM_SECRET_KEY={secret}\n" in out
