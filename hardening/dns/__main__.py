"""`python -m hardening.dns render --nameserver IP [...]`: print a resolv.conf (see hardening.dns)."""

from __future__ import annotations

import click

from hardening.dns import ResolverConfigError, render


@click.group()
def main() -> None:
    """Resolver configuration."""


@main.command(name="render")
@click.option("--nameserver", "nameservers", multiple=True, required=True, help="an IP address (1-3 times)")
def render_command(nameservers: tuple[str, ...]) -> None:
    """Print /etc/resolv.conf for the given external resolvers."""
    try:
        click.echo(render(nameservers), nl=False)
    except ResolverConfigError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
