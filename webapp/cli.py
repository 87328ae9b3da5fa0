"""What every `flask --app webapp` command shares (docs/webapp.md): the audit actor `cli:<os user>`,
and exit 1 with a one-line reason on stderr when it refuses or fails."""

from __future__ import annotations

import getpass
import sys
from typing import NoReturn

import click


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def actor() -> str:
    """`cli:<os user>`, or `cli:?` for a user without a name (no passwd entry): still audited."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli:?"
