"""The app factory and the request lifecycle.

Each request runs in one unit of work (webapp/unit.py): the session load, the view's writes, the
session save, the audit records and the outbox events commit together, at the very end, or not at
all. The audit chain head is therefore locked only for the last moment of a request.

Settings the app cannot run with stop `create_app` with a one-line `ConfigError`, so that a server
never starts half-configured. Under Flask's command line alone (`flask --app webapp ...`) the app
loads without them: the commands are listed and their --help works with no settings at all, and
running one refuses with that same line (webapp/cli.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from flask import Flask, g, redirect, request, url_for
from flask.cli import ScriptInfo
from flask.helpers import get_debug_flag
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.engine import Engine
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from webapp import budgets, failures, navigation, syslog, validation
from webapp import config as config_module
from webapp.admin.commands import audit_cli, certs_cli, db_cli, health, services_cli, users_cli
from webapp.admin.operations import bp as operations_bp
from webapp.admin.views import bp as admin_bp
from webapp.api import identity as api_identity
from webapp.api import setup as api_setup
from webapp.audit.views import bp as audit_bp
from webapp.auth import passwords
from webapp.auth.account import bp as account_bp
from webapp.auth.hours import WorkingHours
from webapp.auth.service import LoginPolicy, User, load_user
from webapp.auth.sessions import DbSessionInterface, seconds_left
from webapp.auth.views import bp as auth_bp
from webapp.clock import Clock, SystemClock
from webapp.db.engine import make_engine
from webapp.events import Event
from webapp.headers import SecurityHeaders
from webapp.keys.commands import keys_cli
from webapp.mail.commands import mail_cli
from webapp.outbox import EventSink, OutboxSink
from webapp.records.commands import records_cli  # purge-retired and import
from webapp.records.views import bp as records_bp
from webapp.refusals import refuse
from webapp.request import origin, unit
from webapp.retry import Retry
from webapp.services import Services, install, install_unusable, services
from webapp.vault import Vault, make_vault

DEV_SECRET_FILE = "dev-secret-key"  # noqa: S105 - a file name, not a secret
# Every `flask --app webapp` command (docs/webapp.md).
COMMANDS = (users_cli, services_cli, certs_cli, audit_cli, db_cli, health, keys_cli, mail_cli, records_cli)


class StrongroomFlask(Flask):
    def full_dispatch_request(self) -> Response:
        try:
            response = super().full_dispatch_request()
            _finish(response)
            return response
        except Exception as exc:  # noqa: BLE001 - every failure is classified and answered in failures.handle
            return failures.handle(self, exc)


def _finish(response: Response) -> None:
    uow = unit()
    if not uow.entries and request.endpoint != "static":
        # Every request leaves a record; views that know more record their own event.
        uow.record(Event.PAGE_VIEW, ok=response.status_code < 400, resource=request.path[:200])
    uow.commit()


def _dev_secret(instance: Path) -> str:
    """A per-checkout development secret, generated once and labelled so nobody mistakes it."""
    path = instance / DEV_SECRET_FILE
    if not path.exists():
        instance.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name and linked into place: two gunicorn workers starting at
        # once must not both generate one, nor read a half-written file.
        tmp = instance / f".{DEV_SECRET_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# an insecure DEVELOPMENT secret, generated for this checkout only\n")
            f.write(secrets.token_urlsafe(48) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # the first one wins
        tmp.unlink()
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return lines[0]


def create_app(
    config: dict[str, Any] | None = None,
    *,
    engine: Engine | None = None,
    clock: Clock | None = None,
    vault: Vault | None = None,
    events: EventSink | None = None,
) -> Flask:
    """The web app. Settings come from `config`, else the environment and the instance file;
    collaborators passed in (tests do) replace the real ones."""
    try:
        return _configured(config, engine=engine, clock=clock, vault=vault, events=events)
    except config_module.ConfigError as exc:
        if not _loaded_by_flask_cli():
            raise
        return _without_settings(exc)


def _loaded_by_flask_cli() -> bool:
    """True while Flask's command line loads the app, to list its commands or to run one."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.find_object(ScriptInfo) is not None


def _without_settings(problem: config_module.ConfigError) -> Flask:
    """An app that has the commands and nothing else: each command refuses to run with `problem`."""
    app = Flask("webapp")
    install_unusable(app, problem)
    for command in COMMANDS:
        app.cli.add_command(command)

    @app.before_request
    def _refuse() -> None:  # `flask run`: not one request without the settings
        raise problem

    return app


def _configured(
    config: dict[str, Any] | None,
    *,
    engine: Engine | None,
    clock: Clock | None,
    vault: Vault | None,
    events: EventSink | None,
) -> Flask:
    instance_path = (config or {}).get("INSTANCE_PATH") or os.environ.get("STRONGROOM_INSTANCE_PATH")
    app = StrongroomFlask("webapp", instance_path=instance_path or None, instance_relative_config=True)
    app.config.update(config_module.DEFAULTS)
    app.config.from_pyfile("strongroom.cfg", silent=True)
    app.config.from_prefixed_env("STRONGROOM")
    if config:
        app.config.update(config)
    if app.config["MODE"] == "development" and not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _dev_secret(Path(app.instance_path))
    config_module.validate(app.config)
    if app.config["MODE"] == "production" and get_debug_flag():
        raise config_module.ConfigError("FLASK_DEBUG is set: the debugger must never run in production mode")
    # Never Flask's debugger in production, whatever FLASK_DEBUG says.
    app.config["PROPAGATE_EXCEPTIONS"] = app.config["MODE"] == "development"
    if app.config["MODE"] == "production":
        app.debug = False

    url = app.config["DATABASE_URL"] or f"sqlite:///{Path(app.instance_path) / 'strongroom.db'}"
    svc = Services(
        engine=engine or make_engine(url),
        clock=clock or SystemClock(),
        vault=vault or make_vault(app.config["KEYD_SOCKET"], timeout=float(app.config["KEYD_TIMEOUT"])),
        events=events or OutboxSink(logger=syslog.event_logger()),
        hasher=passwords.make_hasher(
            time_cost=app.config["ARGON2_TIME_COST"],
            memory_cost=app.config["ARGON2_MEMORY_COST"],
            parallelism=app.config["ARGON2_PARALLELISM"],
        ),
        hours=WorkingHours.parse(
            app.config["WORKING_HOURS"], app.config["WORKING_DAYS"], app.config["WORKING_TIMEZONE"]
        ),
        login_policy=LoginPolicy(
            threshold=app.config["LOCKOUT_THRESHOLD"],
            lock_for=timedelta(minutes=app.config["LOCKOUT_MINUTES"]),
        ),
        audit_logger=syslog.audit_logger(),
        event_logger=syslog.event_logger(),
    )
    install(app, svc)
    app.session_interface = DbSessionInterface()
    # A request the database rolled back on its own (deadlock, Galera conflict) runs again: webapp/retry.py.
    retried = Retry(app.wsgi_app, max_body=app.config["MAX_CONTENT_LENGTH"])
    app.extensions["strongroom.retry"] = retried  # its counters
    app.wsgi_app = SecurityHeaders(retried)  # type: ignore[method-assign]

    login_manager = LoginManager()
    login_manager.session_protection = None  # our own binding: IP and certificate, checked per request
    login_manager.init_app(app)

    @login_manager.user_loader
    def _load(user_id: str) -> User | None:
        return load_user(unit().conn, user_id, origin().fingerprint, now=services().clock.now())

    # The JSON API's service account, for its request only (no session): webapp/api/identity.py.
    login_manager.request_loader(api_identity.load_service_user)

    @login_manager.unauthorized_handler
    def _unauthorized() -> ResponseReturnValue:
        unit().record(Event.ACCESS_DENIED, ok=False, resource=request.path[:200], detail="not_logged_in")
        return redirect(url_for("auth.login"))

    # Order matters: surface session-load failures, identify, refuse bad input, then check CSRF.
    @app.before_request
    def _startup_error() -> None:
        err = g.pop("startup_error", None)
        if err is not None:
            raise err

    # Which door: service certificates on /api/ alone, and never a person's there (webapp/api/identity.py).
    app.before_request(api_identity.gate)

    @app.before_request
    def _identify() -> None:
        who = origin()
        if who.problem:
            unit().record(
                Event.CERT_HEADER_UNTRUSTED, ok=False, resource=request.path[:200], detail=who.problem
            )
        if request.endpoint != "static" and current_user.is_authenticated:
            unit().origin.actor = current_user.username
            g.actor = current_user.username

    budgets.init_app(app)  # request budgets: after identification, before input checks (docs/alerts.md)
    app.before_request(validation.guard)
    csrf = CSRFProtect(app)
    _register_error_pages(app)

    app.jinja_env.globals["nav_links"] = navigation.links
    app.jinja_env.globals["session_seconds_left"] = seconds_left
    app.register_blueprint(auth_bp)
    app.register_blueprint(account_bp)
    app.register_blueprint(audit_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(records_bp)
    app.register_blueprint(operations_bp)
    api_setup.init_app(app, csrf)  # /api/v1: CSRF exempt, problem+json, no cookies (docs/crm-api.md)
    for command in COMMANDS:
        app.cli.add_command(command)

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        uow = g.pop("uow", None)
        if uow is not None:
            uow.close()

    return app


def _refusal(event: Event, status: int, message: str, detail: str, heading: str | None = None) -> Response:
    return refuse(event, detail, status=status, message=message, heading=heading)


def _register_error_pages(app: Flask) -> None:
    @app.errorhandler(validation.InputRefused)
    def _input(exc: validation.InputRefused) -> Response:
        return _refusal(Event.INPUT_REFUSED, 400, f"Request refused: {exc.reason}.", exc.reason)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        return _refusal(Event.INPUT_REFUSED, 400, "Request refused: it is too large.", "too_large")

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Response:
        return _refusal(
            Event.CSRF_REFUSED,
            400,
            "Request refused: the form's security token is missing or expired. Reload the page, try again.",
            str(exc.description or "csrf")[:100],
            heading="Form expired: nothing was saved",
        )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        event = {404: Event.NOT_FOUND, 403: Event.ACCESS_DENIED}.get(status, Event.INPUT_REFUSED)
        messages = {
            403: "You are not allowed to see this page.",
            404: "There is no such page.",
            405: "Request refused: this method is not allowed here.",
        }
        return _refusal(event, status, messages.get(status, "Request refused."), f"http_{status}")
