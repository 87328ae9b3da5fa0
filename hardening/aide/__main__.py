"""`python -m hardening.aide > /etc/strongroom/aide.conf`: the production AIDE configuration."""

import click

from hardening.aide import render


@click.command()
def main() -> None:
    """Print the production /etc/strongroom/aide.conf (the watchdog runs `aide --check` with it)."""
    click.echo(render(), nl=False)


if __name__ == "__main__":
    main(prog_name="python -m hardening.aide")
