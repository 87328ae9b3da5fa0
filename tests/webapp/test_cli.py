"""`flask --app webapp`: its commands are listed and explained without any settings, and refuse to run
without them, in one line, before they do anything (webapp/cli.py). `--help` on every command with an
empty environment is tests/test_cli_help.py's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from flask.cli import ScriptInfo

from webapp import create_app
from webapp.app import COMMANDS
from webapp.cli import Command
from webapp.config import ConfigError
from webapp.services import services

ROOT = Path(__file__).resolve().parents[2]
EMPTY_ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}


def _leaves(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _leaves(sub, f"{path} {name}")
    else:
        yield path, command


LEAVES = [leaf for command in COMMANDS for leaf in _leaves(command, str(command.name))]


def test_every_group_and_command_says_what_it_does() -> None:
    assert len(LEAVES) > 20, "too few commands found: the walk is broken"
    groups = [c for c in COMMANDS if isinstance(c, click.Group)]
    assert [g.name for g in groups if not (g.help or "").strip()] == []
    assert [path for path, c in LEAVES if not (c.help or "").strip()] == []


def test_every_command_checks_the_settings_before_it_runs() -> None:
    assert [path for path, c in LEAVES if not isinstance(c, Command)] == []


@pytest.mark.parametrize(
    "args",
    [
        ("users", "add", "carol", "--role", "clerk"),  # would prompt for a password first
        ("users", "list"),
        ("mail", "send"),  # would refuse the mail settings first, with exit 78
        ("keys", "versions"),
        ("records", "purge-retired", "--dry-run"),
        ("health",),
        ("db", "upgrade"),
    ],
    ids=" ".join,
)
def test_without_settings_a_command_refuses_in_one_line_before_doing_anything(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", *args],
        cwd=ROOT,
        # An empty instance folder: no settings file either.
        env=EMPTY_ENV | {"STRONGROOM_INSTANCE_PATH": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: SECRET_KEY must be set (STRONGROOM_SECRET_KEY or the instance file)")
    assert list(tmp_path.iterdir()) == []  # no database file, no spool


def test_under_the_flask_command_line_an_app_without_settings_loads_and_serves_nothing(
    tmp_path: Path,
) -> None:
    info = ScriptInfo(create_app=lambda: create_app({"INSTANCE_PATH": str(tmp_path)}))
    with click.Context(click.Command("flask"), obj=info).scope():
        app = info.load_app()
    assert {"users", "certs", "audit", "db", "health", "keys", "mail", "records"} <= set(app.cli.commands)
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        services(app)
    assert app.test_client().get("/").status_code == 500


def test_outside_the_flask_command_line_bad_settings_stop_the_app(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({"INSTANCE_PATH": str(tmp_path)})
