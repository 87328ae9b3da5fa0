"""`python -m hardening.vpn server|client` (see docs/hardening.md, "VPN")."""

from __future__ import annotations

from pathlib import Path

import click

from hardening.firewall.config import FirewallConfigError, load_config
from hardening.firewall.render import write_atomic
from hardening.vpn.render import render_client, render_server


@click.group()
def main() -> None:
    """WireGuard configurations generated from the address file's [vpn] section."""


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="e.g. wg0.conf")
def server(config: Path, out: Path) -> None:
    """Write the server's wg-quick config (no private key in it)."""
    try:
        text = render_server(load_config(config))
    except FirewallConfigError as exc:
        raise click.ClickException(f"{config}: {exc}") from None
    # wg-quick warns about world-readable configs, even without a key inside.
    write_atomic(out, text, mode=0o600)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("name")
@click.option("--server-public-key", required=True, help="The server's WireGuard public key (wg pubkey).")
@click.option("--endpoint", required=True, help="the server's public host:port")
def client(config: Path, name: str, server_public_key: str, endpoint: str) -> None:
    """Print the config for peer NAME's own machine (its private key left as a placeholder)."""
    try:
        text = render_client(
            load_config(config), name, server_public_key=server_public_key, endpoint=endpoint
        )
    except FirewallConfigError as exc:
        raise click.ClickException(f"{config}: {exc}") from None
    click.echo(text, nl=False)


if __name__ == "__main__":
    main()
