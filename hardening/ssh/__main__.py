"""`python -m hardening.ssh [--settings FILE] > /etc/ssh/sshd_config`: the production sshd configuration."""

from pathlib import Path

import click

from hardening.ssh import SshdConfigError, SshdSettings, load_settings, render


@click.command()
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="This server's settings (e.g. /etc/strongroom/sshd.toml: [crl_push] on a web node, docs/ca.md).",
)
def main(settings_path: Path | None) -> None:
    """Print the production /etc/ssh/sshd_config (rendered from hardening/ssh/sshd_config.in)."""
    try:
        settings = load_settings(settings_path) if settings_path is not None else SshdSettings()
        text = render(settings)
    except SshdConfigError as exc:
        # load_settings names the file on a read or TOML error; a rule's refusal names only the key.
        where = "" if str(exc).startswith(f"{settings_path}:") else f"{settings_path}: "
        raise click.ClickException(f"{where}{exc}; nothing was printed") from None
    click.echo(text, nl=False)


if __name__ == "__main__":
    main(prog_name="python -m hardening.ssh")
