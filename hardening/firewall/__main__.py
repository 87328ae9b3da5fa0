"""`python -m hardening.firewall render|check|probe` (see docs/hardening.md, "Firewall")."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hardening.firewall.config import FirewallConfigError, load_config
from hardening.firewall.probe import probe_many
from hardening.firewall.render import Variant, render_iptables, render_nft, write_atomic

OUTPUTS = ("strongroom.nft", "rules.v4", "rules.v6")


@click.group()
def main() -> None:
    """Firewall rules generated from one file of addresses."""


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="A directory (created).",
)
@click.option(
    "--variant",
    type=click.Choice([v.value for v in Variant]),
    default=Variant.PLAIN.value,
    show_default=True,
    help='Which rule set (docs/hardening.md, "Firewall").',
)
def render(config: Path, out: Path, variant: str) -> None:
    """Write strongroom.nft, rules.v4 and rules.v6 into OUT."""
    chosen = Variant(variant)
    try:
        parsed = load_config(config)
        texts = {
            "strongroom.nft": render_nft(parsed, chosen),
            "rules.v4": render_iptables(parsed, chosen, family=4),
            "rules.v6": render_iptables(parsed, chosen, family=6),
        }
    except FirewallConfigError as exc:
        raise click.ClickException(f"{config}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        write_atomic(out / name, texts[name], mode=0o644)
    click.echo(f"wrote {', '.join(OUTPUTS)} ({chosen} variant) to {out}")


@main.command()
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
def check(config: Path) -> None:
    """Parse the address file and summarise it; exit 1 with the reason if it is malformed."""
    try:
        parsed = load_config(config)
    except FirewallConfigError as exc:
        raise click.ClickException(f"{config}: {exc}") from None
    click.echo(f"admins (tcp 22): {', '.join(map(str, parsed.admins))}")
    click.echo(f"employees + CRM (tcp 443): {', '.join(map(str, parsed.https_clients)) or '(none)'}")
    uids = ", ".join(map(str, parsed.local_only_uids)) or "(none)"
    click.echo(f"loopback-only senders (uids): {uids}")
    if parsed.vpn is not None:
        click.echo(f"vpn: {parsed.vpn.interface} {parsed.vpn.address}, {len(parsed.vpn.peers)} peer(s)")


@main.command()
@click.argument("hosts", nargs=-1, required=True)
@click.option(
    "--port",
    "ports",
    type=click.IntRange(1, 65535),
    multiple=True,
    default=(22, 443),
    show_default=True,
    help="A TCP port to try (repeatable).",
)
@click.option(
    "--timeout", type=click.FloatRange(0.05, 30), default=1.0, show_default=True, help="Seconds per try."
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object: {host: {port: outcome}}")
def probe(hosts: tuple[str, ...], ports: tuple[int, ...], timeout: float, as_json: bool) -> None:
    """Try each HOST on each port: open, refused (reachable, not listening) or timeout (dropped)."""
    outcomes = probe_many([(h, p) for h in hosts for p in ports], timeout=timeout)
    if as_json:
        table: dict[str, dict[str, str]] = {}
        for (host, port), outcome in outcomes.items():
            table.setdefault(host, {})[str(port)] = outcome.value
        json.dump(table, sys.stdout)
        sys.stdout.write("\n")
        return
    for (host, port), outcome in outcomes.items():
        click.echo(f"{host} {port}/tcp {outcome}")


if __name__ == "__main__":
    main()
