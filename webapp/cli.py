"""What every `flask --app webapp` command shares (docs/webapp.md).

- Errors: `raise click.ClickException("<what> — <next step>")`, one line `Error: ...` on stderr and
  exit 1 (the CA tool relies on that); `SettingsUnusable` where a command documents exit 78.
  A malformed argument is `UsageFailure`: the same one line, exit 2.
- The audit actor of a command: `cli:<os user>`.
- `Group` and its `Command`s: `--help` needs no settings; running a command does, and in an app built
  without them (`webapp.app.create_app` under `flask`) the command refuses with the settings' one-line
  reason before it does anything (no password prompt first, no half-done work).
"""

from __future__ import annotations

import getpass
from typing import Any

import click
from flask import Flask, current_app, has_app_context
from flask.cli import AppGroup, ScriptInfo

from webapp.services import services


class SettingsUnusable(click.ClickException):
    """Settings the command cannot run with: retrying cannot help, so systemd must not restart it
    (sysexits.h EX_CONFIG, in the units' RestartPreventExitStatus=)."""

    exit_code = 78


class UsageFailure(click.ClickException):
    """A malformed argument: one line `Error: ...` and exit 2 (click's own usage errors would print the
    usage text too), raised by an option's callback so that it comes before any settings are read."""

    exit_code = 2


def actor() -> str:
    """`cli:<os user>`, or `cli:?` for a user without a name (no passwd entry): still audited."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli:?"


def _app(ctx: click.Context) -> Flask:
    if has_app_context():
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return app
    return ctx.ensure_object(ScriptInfo).load_app()


class Command(click.Command):
    """A command that needs the app's settings to run (never to show its --help)."""

    def invoke(self, ctx: click.Context) -> Any:
        services(_app(ctx))  # raises the settings' one-line reason when the app has none
        return super().invoke(ctx)


class Group(AppGroup):
    """An AppGroup whose commands are `Command`s."""

    command_class = Command
