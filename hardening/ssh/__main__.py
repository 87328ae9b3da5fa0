"""`python -m hardening.ssh > /etc/ssh/sshd_config`: the production sshd configuration."""

import click

from hardening.ssh import render


@click.command()
def main() -> None:
    """Print the production /etc/ssh/sshd_config (rendered from hardening/ssh/sshd_config.in)."""
    click.echo(render(), nl=False)


if __name__ == "__main__":
    main(prog_name="python -m hardening.ssh")
