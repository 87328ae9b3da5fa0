"""The collaborators every request and command uses, and the one way to reach them: `services()`.

`create_app` builds a `Services` and installs it on the app; views, hooks and `flask --app webapp`
commands ask `services()` for it. Tests pass their own collaborators to `create_app` (engine, clock,
vault, events) and reach the result with `services(app)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import argon2
from flask import Flask, current_app, has_app_context
from sqlalchemy.engine import Engine

from webapp.auth.hours import WorkingHours
from webapp.auth.service import LoginPolicy
from webapp.clock import Clock
from webapp.outbox import EventSink
from webapp.unit import Origin, UnitOfWork
from webapp.vault import Vault

EXTENSION = "strongroom"  # app.extensions[EXTENSION]: read it through services(), never directly
UNUSABLE = "strongroom.unusable"  # why an app built for the command line has no services


@dataclass
class Services:
    """The collaborators every request and command uses; tests pass their own."""

    engine: Engine
    clock: Clock
    vault: Vault
    events: EventSink
    hasher: argon2.PasswordHasher
    hours: WorkingHours
    login_policy: LoginPolicy
    audit_logger: logging.Logger
    event_logger: logging.Logger

    def unit(self, origin: Origin) -> UnitOfWork:
        return UnitOfWork(
            self.engine, clock=self.clock, events=self.events, audit_logger=self.audit_logger, origin=origin
        )


def install(app: Flask, svc: Services) -> None:
    app.extensions[EXTENSION] = svc


def install_unusable(app: Flask, problem: Exception) -> None:
    """For an app built without its settings: `services()` raises `problem` instead."""
    app.extensions[UNUSABLE] = problem


def services(app: Flask | None = None) -> Services:
    """The services of `app`, or of the current app (inside a request or a command).

    An app built without its settings (`flask --app webapp --help` needs none) has none: asking for
    them raises the reason, a one-line `ConfigError` that names the setting."""
    if app is None:
        if not has_app_context():
            raise RuntimeError(
                "services() outside an app context: call it in a request or a command, or pass the app"
            )
        app = current_app
    found = app.extensions.get(EXTENSION)
    if isinstance(found, Services):
        return found
    unusable = app.extensions.get(UNUSABLE)
    if isinstance(unusable, Exception):
        raise unusable
    raise RuntimeError("this Flask app has no Strongroom services: make it with webapp.create_app")
