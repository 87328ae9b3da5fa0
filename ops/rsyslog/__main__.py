"""`python -m ops.rsyslog sender|receiver ...`: print the rsyslog config for your hosts and paths
(the files in ops/rsyslog/ are the same rendering with example values)."""

from __future__ import annotations

import click

from ops.rsyslog import PRODUCTION_RECEIVER, PRODUCTION_SENDER, Receiver, Sender


@click.group()
def cli() -> None:
    """Render the remote-logging configs."""


@cli.command("sender")
@click.option("--target", required=True, help="The log host's name or address.")
@click.option("--port", type=click.IntRange(1, 65535), default=PRODUCTION_SENDER.port, show_default=True)
@click.option("--permitted-peer", required=True, help="The name in the log host's certificate.")
@click.option("--ca-file", default=PRODUCTION_SENDER.ca_file, show_default=True)
@click.option("--cert-file", default=PRODUCTION_SENDER.cert_file, show_default=True)
@click.option("--key-file", default=PRODUCTION_SENDER.key_file, show_default=True)
@click.option("--local-copy", default=PRODUCTION_SENDER.local_copy, show_default=True)
def sender(
    target: str, port: int, permitted_peer: str, ca_file: str, cert_file: str, key_file: str, local_copy: str
) -> None:
    """Print the vault server's rsyslog config: forward over TLS to the log host, keep a local copy."""
    _emit(Sender(target, port, permitted_peer, ca_file, cert_file, key_file, local_copy))


@cli.command("receiver")
@click.option("--port", type=click.IntRange(1, 65535), default=PRODUCTION_RECEIVER.port, show_default=True)
@click.option("--permitted-peer", required=True, help="The name in the vault server's certificate.")
@click.option("--ca-file", default=PRODUCTION_RECEIVER.ca_file, show_default=True)
@click.option("--cert-file", default=PRODUCTION_RECEIVER.cert_file, show_default=True)
@click.option("--key-file", default=PRODUCTION_RECEIVER.key_file, show_default=True)
@click.option("--directory", default=PRODUCTION_RECEIVER.directory, show_default=True)
@click.option(
    "--reader-group",
    default=PRODUCTION_RECEIVER.reader_group,
    show_default=True,
    help="Group that may read the files (the vault's read-only pull account); '' for root only.",
)
def receiver(
    port: int,
    permitted_peer: str,
    ca_file: str,
    cert_file: str,
    key_file: str,
    directory: str,
    reader_group: str,
) -> None:
    """Print the log host's rsyslog config: accept the vault server's log over TLS, a file per host."""
    _emit(Receiver(port, permitted_peer, ca_file, cert_file, key_file, directory, reader_group or None))


def _emit(config: Sender | Receiver) -> None:
    try:
        text = config.render()
    except ValueError as exc:
        raise click.ClickException(f"{exc} — fix that option") from None
    click.echo(text, nl=False)


if __name__ == "__main__":
    cli(prog_name="python -m ops.rsyslog")
