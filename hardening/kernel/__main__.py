"""`python -m hardening.kernel check [--file F]`: exit 1 when the running kernel differs from the file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hardening.kernel import SYSCTL_FILE, SysctlFileError, check, parse


@click.group()
def main() -> None:
    """Kernel and network hardening sysctls."""


@main.command(name="check")
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=SYSCTL_FILE,
    show_default=True,
    help="The sysctl file to compare with.",
)
def check_command(path: Path) -> None:
    """Compare the running kernel with the sysctl file."""
    try:
        settings = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SysctlFileError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    mismatches = check(settings)
    for item in mismatches:
        actual = "missing from this kernel" if item.actual is None else f"is {item.actual}"
        click.echo(f"{item.key} {actual}, want {item.wanted}")
    click.echo(f"{len(settings) - len(mismatches)}/{len(settings)} settings as required")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
