"""deploy/webapp.env.in, filled in as the install command fills it, read the way the web app reads it
(`create_app` -> STRONGROOM_* -> `MailSettings.from_config`): every setting the alert mailer requires
is there and valid, and agrees with the postfix rendering (ops.postfix) it hands its mail to. The
seam "the env file lacks the mailer's recipients and sender" cannot come back unnoticed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ops.postfix import Postfix
from webapp import create_app
from webapp.mail.settings import MailConfigError, MailSettings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "webapp.env.in"
PLACEHOLDER = re.compile(r"@([A-Z][A-Z_]*)@")
HOST = "vault.example.internal"
EXAMPLE = {
    "SECRET_KEY": "k" * 64,
    "MAIL_FROM": f"strongroom@{HOST}",
    "ALERT_TO": f"alice@{HOST},bob@{HOST}",
}


def render(values: dict[str, str]) -> str:
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    return text


def environment_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= for the plain KEY=VALUE lines this file uses (no quotes, no spaces)."""
    env = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, line
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
        assert not value.startswith(("'", '"')), f"needs systemd quoting: {line}"
        assert " " not in value, f"needs systemd quoting: {line}"
        env[key] = value
    return env


def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]) -> MailSettings:
    for key in [k for k in os.environ if k.startswith("STRONGROOM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STRONGROOM_INSTANCE_PATH", str(tmp_path))
    app = create_app()
    try:
        return MailSettings.from_config(app.config)
    finally:
        app.extensions["strongroom"].engine.dispose()


def test_every_placeholder_is_documented_and_filled() -> None:
    text = TEMPLATE.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    used = {m for line in text.splitlines() if not line.startswith("#") for m in PLACEHOLDER.findall(line)}
    documented = set(re.findall(r"^#\s+@([A-Z][A-Z_]*)@", header, re.MULTILINE))
    assert used == documented == set(EXAMPLE)
    assert PLACEHOLDER.search(render(EXAMPLE)) is None


def test_the_filled_file_gives_the_mailer_valid_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = environment_file(render(EXAMPLE))
    for name in ("SMTP_HOST", "SMTP_PORT", "MAIL_FROM", "ALERT_TO"):
        assert f"STRONGROOM_{name}" in env, f"the mailer's {name} must be set explicitly"
    s = _settings(monkeypatch, tmp_path, env)
    assert (s.host, s.port, s.starttls) == ("127.0.0.1", 25, False)
    assert s.sender == f"strongroom@{HOST}"
    assert s.recipients == (f"alice@{HOST}", f"bob@{HOST}")
    # The postfix it talks to: the listener's port, the sender's domain, the admins as recipients.
    postfix = Postfix(myhostname=s.domain, admins=s.recipients)
    assert postfix.port == s.port
    assert f"inline:{{ {s.domain}=OK }}" in postfix.render()["main.cf"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"SECRET_KEY": "k" * 64}, "MAIL_FROM"),  # the template as shipped: placeholders left
        ({**EXAMPLE, "MAIL_FROM": ""}, "MAIL_FROM"),
        ({**EXAMPLE, "ALERT_TO": ""}, "ALERT_TO"),
        ({**EXAMPLE, "ALERT_TO": f"alice@{HOST}, bob@{HOST}"}, None),  # spaces: systemd keeps them
        ({**EXAMPLE, "ALERT_TO": f"<alice@{HOST}>"}, "ALERT_TO"),
        ({**EXAMPLE, "MAIL_FROM": f"strongroom@{HOST}\\r\\nBcc:x@example.com"}, "MAIL_FROM"),
    ],
)
def test_an_unfilled_or_bad_value_stops_the_mailer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: dict[str, str], message: str | None
) -> None:
    text = render(values)
    if message is None:  # not even a valid environment file for systemd's plain form
        with pytest.raises(AssertionError, match="systemd quoting"):
            environment_file(text)
        return
    with pytest.raises(MailConfigError, match=message):
        _settings(monkeypatch, tmp_path, environment_file(text))
