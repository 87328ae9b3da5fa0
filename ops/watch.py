"""`python -m ops.watch`: the watchdog's command line (run by a systemd timer, see ops/deploy/).

    python -m ops.watch [--config FILE] run [--check NAME ...]
    python -m ops.watch baseline record | show [--proposed] | approve DIGEST
    python -m ops.watch report [--day YYYY-MM-DD] [--notify]

Exit status: 0 when the pass completed (alerts, if any, are queued), 1 when it could not (settings,
state or database): the timer unit's OnFailure= then tells the admin by the system's own mail.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import click
import sqlalchemy as sa

from ops import runner
from ops.alerts import Alert, Finding, enqueue
from ops.checks import access
from ops.settings import CHECKS, Settings, SettingsError, load
from ops.state import StateDir, StateError
from webapp.db.engine import make_engine

DEFAULT_CONFIG = "/etc/strongroom/watch.toml"


def _now() -> datetime:
    return datetime.now(UTC)


def _settings(ctx: click.Context) -> Settings:
    try:
        return load(Path(ctx.obj["config"]))
    except SettingsError as exc:
        raise click.ClickException(
            f"{exc} — fix the settings file given by --config (every key: ops/deploy/watch.toml)"
        ) from None


def _engine(settings: Settings) -> sa.Engine:
    return make_engine(settings.database_url)


@click.group()
@click.option(
    "--config",
    default=lambda: os.environ.get("STRONGROOM_WATCH_CONFIG", DEFAULT_CONFIG),
    show_default=DEFAULT_CONFIG,
    help="Settings file (TOML).",
)
@click.pass_context
def cli(ctx: click.Context, config: str) -> None:
    """The watchdog: checks, their baseline, and the daily access report (docs/monitoring.md).

    Exit 0 when the command completed (alerts, if any, are queued), 1 when it could not.
    """
    ctx.obj = {"config": config}


@cli.command("run")
@click.option("--check", "checks", multiple=True, type=click.Choice(CHECKS), help="Only these checks.")
@click.pass_context
def run_cmd(ctx: click.Context, checks: tuple[str, ...]) -> None:
    """One pass of the enabled checks; new findings go to the outbox."""
    settings = _settings(ctx)
    engine = _engine(settings)
    try:
        outcome = runner.run_pass(
            settings, state=StateDir(settings.state_dir), engine=engine, now=_now(), only=checks or None
        )
    except StateError as exc:
        raise click.ClickException(f"{exc} — fix the state directory (state_dir in the settings)") from None
    except Exception as exc:  # noqa: BLE001 - reported and exit 1: the timer's OnFailure= alerts
        raise click.ClickException(
            f"the pass did not complete: {type(exc).__name__} — check the database and the journal; rerun"
        ) from None
    finally:
        engine.dispose()
    for f in outcome.alerted:
        click.echo(f"ALERT\t{f.alert}\t{f.resource}\t{f.detail}")
    for f in outcome.ongoing:
        click.echo(f"ongoing\t{f.alert}\t{f.resource}\t{f.detail}")
    click.echo(f"{len(outcome.alerted)} alert(s) queued, {len(outcome.ongoing)} ongoing")


@cli.group("baseline")
def baseline_cli() -> None:
    """The known-good state the checks compare against."""


@baseline_cli.command("record")
@click.pass_context
def baseline_record(ctx: click.Context) -> None:
    """Snapshot processes and listening ports as a proposal to review."""
    settings = _settings(ctx)
    try:
        digest = runner.record_baseline(settings, state=StateDir(settings.state_dir), now=_now())
    except Exception as exc:  # noqa: BLE001 - reported, exit 1
        raise click.ClickException(
            f"could not record the baseline: {type(exc).__name__}: {exc} — fix that, then record again"
        ) from None
    click.echo(
        f"proposed baseline recorded; review it with `baseline show --proposed`, then approve {digest}"
    )


@baseline_cli.command("show")
@click.option("--proposed", is_flag=True, help="Show the proposal awaiting approval.")
@click.pass_context
def baseline_show(ctx: click.Context, proposed: bool) -> None:
    """Print the baseline (or the proposal) and its digest."""
    settings = _settings(ctx)
    state = StateDir(settings.state_dir)
    name = runner.PROPOSED if proposed else runner.BASELINE
    try:
        data = state.load(name)
        if data is None:
            raise click.ClickException(f"no {name} — record one with `baseline record`")
        click.echo(json.dumps(data, indent=1, sort_keys=True))
        click.echo(f"digest {runner.digest(state, name)}")
    except (StateError, runner.BaselineError) as exc:
        raise click.ClickException(str(exc)) from None


@baseline_cli.command("approve")
@click.argument("digest")
@click.pass_context
def baseline_approve(ctx: click.Context, digest: str) -> None:
    """Make the reviewed proposal the baseline (DIGEST as printed by record/show)."""
    settings = _settings(ctx)
    try:
        runner.approve_baseline(StateDir(settings.state_dir), digest)
    except (StateError, runner.BaselineError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("baseline approved")


@cli.command("report")
@click.option("--day", help="YYYY-MM-DD (default: yesterday, UTC).")
@click.option("--notify", is_flag=True, help="Write the report to the state dir and queue a notification.")
@click.pass_context
def report_cmd(ctx: click.Context, day: str | None, notify: bool) -> None:
    """The daily access report: requests per certificate (no customer data)."""
    settings = _settings(ctx)
    when = _now()
    try:
        the_day = date.fromisoformat(day) if day else (when - timedelta(days=1)).date()
    except ValueError:
        raise click.ClickException("--day must be YYYY-MM-DD, e.g. 2026-12-05") from None
    state = StateDir(settings.state_dir)
    try:
        counts = state.load(f"check-{access.NAME}")
    except StateError as exc:
        raise click.ClickException(f"{exc} — fix the state directory (state_dir in the settings)") from None
    text = access.daily_report(counts, the_day.isoformat())
    click.echo(text, nl=False)
    if notify:
        reports = settings.state_dir / "reports"
        reports.mkdir(mode=0o700, exist_ok=True)
        (reports / f"access-{the_day.isoformat()}.txt").write_text(text)
        engine = _engine(settings)
        try:
            with engine.begin() as conn:
                enqueue(conn, [Finding(Alert.ACCESS_REPORT, resource=the_day.isoformat())], now=when)
        finally:
            engine.dispose()


def main() -> None:
    cli(prog_name="python -m ops.watch")


if __name__ == "__main__":
    main()
