"""`python -m hardening.mariadb > /etc/mysql/mariadb.conf.d/90-strongroom.cnf`."""

import click

from hardening.mariadb import render


@click.command()
def main() -> None:
    """Print the production MariaDB hardening, /etc/mysql/mariadb.conf.d/90-strongroom.cnf."""
    click.echo(render(), nl=False)


if __name__ == "__main__":
    main(prog_name="python -m hardening.mariadb")
