"""The mailer's settings and texts: the TLS policy and every refusal as a table."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from webapp.config import DEFAULTS
from webapp.events import ALERTS
from webapp.mail.settings import MailConfigError, MailSettings, tls_required
from webapp.mail.texts import PHRASES, notification

BASE = {**DEFAULTS, "MAIL_FROM": "strongroom@vault.example", "ALERT_TO": "admin@example.com"}


@pytest.mark.parametrize(
    ("host", "mode", "required"),
    [
        ("127.0.0.1", "auto", False),
        ("127.0.0.53", "auto", False),
        ("::1", "auto", False),
        ("localhost", "auto", False),
        ("LOCALHOST", "auto", False),
        ("127.0.0.1", "required", True),
        ("localhost", "required", True),
        ("10.0.0.25", "auto", True),
        ("192.168.1.1", "auto", True),
        ("::ffff:10.0.0.1", "auto", True),
        ("mail.example.com", "auto", True),
        ("localhost.example.com", "auto", True),  # a name that merely starts like loopback
        ("127.0.0.1.nip.io", "auto", True),  # resolves anywhere: not loopback
        ("mail.example.com", "required", True),
    ],
)
def test_starttls_policy(host: str, mode: str, required: bool) -> None:
    assert tls_required(host, mode) is required


@pytest.mark.parametrize("mode", ["off", "none", "", "AUTO", "opportunistic"])
def test_there_is_no_mode_that_turns_tls_off(mode: str) -> None:
    with pytest.raises(MailConfigError, match="SMTP_STARTTLS"):
        tls_required("mail.example.com", mode)


def test_defaults_with_addresses_parse() -> None:
    s = MailSettings.from_config(BASE)
    assert (s.host, s.port, s.starttls, s.recipients) == ("127.0.0.1", 25, False, ("admin@example.com",))
    remote = MailSettings.from_config({**BASE, "SMTP_HOST": "mail.example.com", "SMTP_PORT": 587})
    assert remote.starttls


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"SMTP_HOST": "mail example.com"}, "SMTP_HOST"),
        ({"SMTP_HOST": "mail.example.com\r\n"}, "SMTP_HOST"),
        ({"SMTP_HOST": ""}, "SMTP_HOST"),
        ({"SMTP_HOST": 25}, "SMTP_HOST"),
        ({"SMTP_PORT": 0}, "SMTP_PORT"),
        ({"SMTP_PORT": 65536}, "STRONGROOM_SMTP_PORT: must be at most 65535"),
        ({"SMTP_PORT": "25"}, "SMTP_PORT"),
        ({"SMTP_PORT": True}, "SMTP_PORT"),
        ({"SMTP_TIMEOUT": 0}, "SMTP_TIMEOUT"),
        ({"SMTP_STARTTLS": "off"}, "STRONGROOM_SMTP_STARTTLS: must be one of 'auto' or 'required'"),
        ({"MAIL_FROM": None}, "MAIL_FROM"),
        ({"MAIL_FROM": "Strongroom <s@vault.example>"}, "MAIL_FROM"),
        ({"MAIL_FROM": "s@vault.example\r\nBcc: x@evil.example"}, "MAIL_FROM"),
        ({"ALERT_TO": None}, "STRONGROOM_ALERT_TO: is required: comma-separated admin addresses"),
        ({"ALERT_TO": ""}, "STRONGROOM_ALERT_TO: is required: comma-separated admin addresses"),
        ({"ALERT_TO": "admin@example.com,"}, "ALERT_TO"),
        ({"ALERT_TO": "admin"}, "ALERT_TO"),
        ({"ALERT_TO": "a@example.com, A@example.com"}, "STRONGROOM_ALERT_TO: lists an address twice"),
        ({"ALERT_TO": ",".join(f"a{i}@example.com" for i in range(11))}, "ALERT_TO: must have at most 10"),
        ({"ALERT_TO": "admin@example.com,"}, r"STRONGROOM_ALERT_TO\[1\]: is not a plain mail address"),
        ({"ALERT_TO": "admin@example.com\nBcc: x@evil.example"}, "ALERT_TO"),
        ({"SMTP_USER": "alerts"}, "only sent over TLS"),  # loopback in clear: no credentials
        ({"SMTP_USER": "alerts", "SMTP_STARTTLS": "required"}, "SMTP_PASSWORD_FILE"),
        ({"SMTP_USER": "a b", "SMTP_STARTTLS": "required"}, "SMTP_USER"),
        ({"SMTP_CA_FILE": "relative/ca.pem"}, "STRONGROOM_SMTP_CA_FILE: must be an absolute path"),
        ({"SMTP_CA_FILE": "/nonexistent/ca.pem"}, "STRONGROOM_SMTP_CA_FILE: is not a readable file"),
    ],
)
def test_bad_settings_are_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(MailConfigError, match=message):
        MailSettings.from_config({**BASE, **override})


@pytest.mark.parametrize(
    "override",
    [
        {"MAIL_FROM": "Hunter-2-Smtp-Secret"},
        {"ALERT_TO": "admin@example.com, Hunter-2-Smtp-Secret"},
        {"SMTP_HOST": "Hunter-2-Smtp-Secret!"},
        {"SMTP_USER": "Hunter-2 Smtp-Secret", "SMTP_STARTTLS": "required"},
        {"SMTP_PASSWORD_FILE": "Hunter-2-Smtp-Secret"},
    ],
)
def test_a_refusal_never_echoes_the_value(override: dict[str, Any]) -> None:
    with pytest.raises(MailConfigError) as caught:
        MailSettings.from_config({**BASE, **override})
    assert "Hunter" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_credentials_come_from_a_file_and_are_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("Hunter-2-Smtp-Secret\n")
    s = MailSettings.from_config(
        {**BASE, "SMTP_USER": "alerts", "SMTP_STARTTLS": "required", "SMTP_PASSWORD_FILE": str(secret)}
    )
    assert s.password == "Hunter-2-Smtp-Secret"
    assert "Hunter" not in repr(s)


AT = datetime(2026, 11, 28, 2, 14, tzinfo=UTC)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            "auth.login_off_hours",
            "Strongroom: off-hours login at 02:14 UTC, check the audit log on the server",
        ),
        ("ops.port_new", "Strongroom: ops.port_new at 02:14 UTC, check the server"),
        ("records.something_new", "Strongroom: records.something_new at 02:14 UTC, check the audit log"),
        ("ops.4111111111111111", "Strongroom: an unrecognised event at 02:14 UTC, check the server"),
        ("x\r\nBcc: evil@example.com", "Strongroom: an unrecognised event at 02:14 UTC, check the server"),
    ],
)
def test_notification_texts(event: str, line: str) -> None:
    text = notification(event, count=1, first=AT, last=AT)
    assert text.body.startswith(line)
    assert "\n" not in text.subject
    assert "\r" not in text.subject


def test_every_alert_gets_a_recognised_text() -> None:
    for event in ALERTS:
        text = notification(str(event), count=1, first=AT, last=AT)
        assert "unrecognised" not in text.body
        assert "check the audit log on the server" in text.body


def test_the_core_alerts_have_their_own_phrases() -> None:
    from webapp.events import Event

    assert {Event.LOGIN_OFF_HOURS, Event.ACCOUNT_LOCKED, Event.VAULT_SEALED, Event.BUDGET_ALERT} <= set(
        PHRASES
    )
