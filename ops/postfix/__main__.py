"""`python -m ops.postfix render --out DIR --myhostname NAME --admin ADDRESS... [--relayhost [HOST]:PORT]`:
write main.cf, master.cf and virtual for this server (the files in ops/postfix/ are the same rendering
with example values). Then `postmap DIR/virtual`."""

from __future__ import annotations

from pathlib import Path

import click

from common import atomic
from ops.postfix import Postfix, PostfixConfigError


class Refused(click.ClickException):
    """A refused value: one line, exit 2, as the installer expects."""

    exit_code = 2


@click.group()
def cli() -> None:
    """Render postfix's configuration."""


@cli.command("render")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, dir_okay=True, writable=True, path_type=Path),
    help="An existing directory (/etc/postfix); main.cf, master.cf and virtual are replaced.",
)
@click.option("--myhostname", required=True, help="This server's fully qualified name, lowercase.")
@click.option(
    "--admin",
    "admins",
    required=True,
    multiple=True,
    help="An admin's address; repeat for each. Without --relayhost: USER@MYHOSTNAME of a local user.",
)
@click.option(
    "--relayhost", default=None, help="[host.domain]:port of the company's mail server (TLS verified)."
)
def render(out: Path, myhostname: str, admins: tuple[str, ...], relayhost: str | None) -> None:
    """Write the configuration; nothing is written if a value is refused."""
    try:
        files = Postfix(myhostname=myhostname, admins=admins, relayhost=relayhost).render()
    except PostfixConfigError as exc:
        raise Refused(f"{exc} — fix the option; nothing was written") from None
    if not out.is_dir():
        raise Refused(f"{out} is not a directory — create it or pass another --out")
    for name, text in files.items():
        # Whole files or nothing: postfix must never read a half-written main.cf.
        atomic.write_bytes(out / name, text.encode(), mode=0o644)


if __name__ == "__main__":
    cli(prog_name="python -m ops.postfix")
