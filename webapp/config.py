"""Configuration defaults. Nothing here is a secret: SECRET_KEY has no default at all.

Loaded in this order, later wins: these defaults, `<instance>/strongroom.cfg` (a Python file),
environment variables `STRONGROOM_<NAME>` (values parsed as JSON when they parse, else strings), and
the mapping passed to `create_app(config)`.
"""

from __future__ import annotations

import re
from typing import Any

import click

from webapp.auth import passwords

DEFAULTS: dict[str, Any] = {
    # "production" (the default: fail closed) or "development".
    "MODE": "production",
    # None means SQLite in the instance folder (the embedded default).
    "DATABASE_URL": None,
    "KEYD_SOCKET": "/run/strongroom-keyd/keyd.sock",  # keyd's own default
    "KEYD_TIMEOUT": 2.0,
    # Behind Apache on the private Unix socket: trust the proxy's certificate and IP headers.
    "BEHIND_PROXY": False,
    "PROXY_CERT_HEADER": "X-Strongroom-Client-Cert",
    "PROXY_IP_HEADER": "X-Strongroom-Client-IP",
    # Sessions (PCI DSS 8.2.8: idle 15 minutes).
    "SESSION_IDLE_TIMEOUT": 15 * 60,
    "SESSION_ABSOLUTE_TIMEOUT": 8 * 3600,
    "SESSION_BIND_IP": True,
    "SESSION_COOKIE_NAME": "__Host-strongroom",
    "SESSION_COOKIE_SECURE": True,
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Strict",
    # Lockout (PCI DSS 8.3.4).
    "LOCKOUT_THRESHOLD": 10,
    "LOCKOUT_MINUTES": 30,
    # Working hours: logins outside raise an off-hours event.
    "WORKING_HOURS": "09:00-18:00",
    "WORKING_DAYS": "mon-fri",
    "WORKING_TIMEZONE": "UTC",
    # "keyboard"; "keypad" (the password is clicked on a randomized on-screen keypad); or
    # "keypad-pin" (password typed, plus a second PIN clicked on a randomized digit keypad).
    "LOGIN_ENTRY": "keyboard",
    "ARGON2_TIME_COST": passwords.PRODUCTION_TIME_COST,
    "ARGON2_MEMORY_COST": passwords.PRODUCTION_MEMORY_COST_KIB,
    "ARGON2_PARALLELISM": passwords.PRODUCTION_PARALLELISM,
    "PASSWORD_MIN_SCORE": 3,
    # Input limits: whole body, and each single parameter value.
    "MAX_CONTENT_LENGTH": 64 * 1024,
    "MAX_FORM_MEMORY_SIZE": 64 * 1024,
    "MAX_VALUE_LENGTH": 2048,
    "MAX_PARAMETERS": 20,
    # CSRF: tokens on every POST. The Referer check is off because Referrer-Policy is no-referrer
    # (browsers then send none); SameSite=Strict cookies cover cross-site POSTs instead.
    "WTF_CSRF_SSL_STRICT": False,
    "WTF_CSRF_TIME_LIMIT": 3600,
    "AUDIT_PAGE_SIZE": 50,
    # The auditor's CSV export refuses (asks for a narrower filter) when more records than this match.
    "AUDIT_EXPORT_MAX_ROWS": 10_000,
    # Customer records (webapp/records). The CRM reference format: an anchored regular expression.
    "CRM_REF_PATTERN": r"^C[0-9]{6,10}$",
    # Seconds a revealed value stays on screen; seconds a reveal form (its step-up token) stays valid.
    "REVEAL_HIDE_SECONDS": 30,
    "STEPUP_TTL": 300,
    # Days a retired card or item is kept (masked, never revealed) before `records purge-retired`
    # deletes it. The purge's own database user (PURGE_DATABASE_URL) has no default, like the other
    # jobs' users: the installer writes it into that job's environment file only.
    "RETIRED_RETENTION_DAYS": 365,
    # None: the shipped matrix (webapp/records/permissions.json); else a JSON file path or a mapping.
    "RECORDS_PERMISSIONS": None,
    # The CRL file Apache checks client certificates against (SSLCARevocationFile; the installer's
    # /etc/apache2/strongroom/crl.pem). Read only to show it on the admin console (which bound
    # certificates it revokes, when it runs out); None: the console says "unknown", never "not revoked".
    "CA_CRL_FILE": None,
    # Alert mail (webapp/mail, docs/alerts.md): checked when the mailer starts, not by the web app.
    # STARTTLS is always required for a non-loopback host; "required" forces it on loopback too.
    "SMTP_HOST": "127.0.0.1",
    "SMTP_PORT": 25,
    "SMTP_STARTTLS": "auto",
    "SMTP_CA_FILE": None,  # absolute path; None: the system CA store
    "SMTP_USER": None,  # authentication only over TLS, password in SMTP_PASSWORD_FILE
    "SMTP_PASSWORD_FILE": None,
    "SMTP_TIMEOUT": 10,
    "MAIL_FROM": None,
    "ALERT_TO": None,  # comma-separated admin addresses
    # Request budgets (webapp/budgets.py, docs/alerts.md): per employee and in total, per window.
    # `alert`: raise budget.alert when the count reaches it; `limit` (or null): refuse above it (429).
    "REQUEST_BUDGETS": [
        {"scope": "employee", "window": 3600, "alert": 300, "limit": None},
        {"scope": "employee", "window": 86400, "alert": 1500, "limit": None},
        {"scope": "total", "window": 3600, "alert": 3000, "limit": None},
        {"scope": "total", "window": 86400, "alert": 15000, "limit": None},
    ],
    # Reveal budgets (webapp/budgets.py, docs/alerts.md): every reveal on any web node, counted in the
    # database, refused above a limit (429) before keyd is asked. keyd's [budgets] shape and defaults
    # (keyd/config.py): set both to the same numbers. keyd's own stay each node's ceiling.
    "REVEAL_BUDGETS": {
        "employee": {"minute": 30, "hour": 300, "day": 1000},
        "global": {"minute": 300, "hour": 3000, "day": 20000},
    },
}

MODES = ("production", "development")
LOGIN_ENTRIES = ("keyboard", "keypad", "keypad-pin")
_INTS = (
    "SESSION_IDLE_TIMEOUT",
    "SESSION_ABSOLUTE_TIMEOUT",
    "LOCKOUT_THRESHOLD",
    "LOCKOUT_MINUTES",
    "ARGON2_TIME_COST",
    "ARGON2_MEMORY_COST",
    "ARGON2_PARALLELISM",
    "PASSWORD_MIN_SCORE",
    "MAX_CONTENT_LENGTH",
    "MAX_VALUE_LENGTH",
    "MAX_PARAMETERS",
)
# Integer settings with a range of their own: (lowest, highest).
RANGES = {
    "REVEAL_HIDE_SECONDS": (5, 300),
    "STEPUP_TTL": (30, 900),
    # Never 0: a purge would then delete what was retired a second ago.
    "RETIRED_RETENTION_DAYS": (1, 3650),
    "AUDIT_EXPORT_MAX_ROWS": (1, 100_000),
}


class ConfigError(click.ClickException):
    """The app refuses to start with this configuration.

    A ClickException so that `flask --app webapp ...`, which builds the app before it runs any command,
    prints the one-line reason and exits 1 instead of a traceback. It is still an ordinary exception
    for gunicorn and for tests."""


def validate(cfg: dict[str, Any]) -> None:
    if cfg["MODE"] not in MODES:
        raise ConfigError(f"STRONGROOM_MODE must be one of {MODES}")
    if cfg["LOGIN_ENTRY"] not in LOGIN_ENTRIES:
        raise ConfigError(f"STRONGROOM_LOGIN_ENTRY must be one of {LOGIN_ENTRIES}")
    for name in _INTS:
        if not isinstance(cfg[name], int) or isinstance(cfg[name], bool) or cfg[name] <= 0:
            raise ConfigError(f"STRONGROOM_{name} must be a positive integer")
    for name, (lo, hi) in RANGES.items():
        value = cfg[name]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"STRONGROOM_{name} must be an integer from {lo} to {hi}")
    _check_crm_ref_pattern(cfg["CRM_REF_PATTERN"])
    crl = cfg.get("CA_CRL_FILE")
    if crl is not None and not (isinstance(crl, str) and crl.startswith("/")):
        raise ConfigError("STRONGROOM_CA_CRL_FILE must be an absolute path (or unset)")
    for name in ("BEHIND_PROXY", "SESSION_BIND_IP"):
        if not isinstance(cfg[name], bool):
            raise ConfigError(f"STRONGROOM_{name} must be true or false")
    secret = cfg.get("SECRET_KEY")
    if not isinstance(secret, str) or len(secret) < 32:
        raise ConfigError(
            "SECRET_KEY must be set (STRONGROOM_SECRET_KEY or the instance file), 32+ characters"
        )
    if not cfg["SESSION_COOKIE_SECURE"] or cfg["SESSION_COOKIE_SAMESITE"] != "Strict":
        raise ConfigError("session cookies must be Secure and SameSite=Strict")


def _check_crm_ref_pattern(pattern: object) -> None:
    try:
        re.compile(pattern)  # type: ignore[call-overload]
    except (re.error, TypeError):
        raise ConfigError("STRONGROOM_CRM_REF_PATTERN must be a regular expression") from None
    if not (isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")):
        raise ConfigError("STRONGROOM_CRM_REF_PATTERN must be anchored (^...$)")
