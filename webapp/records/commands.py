"""`flask --app webapp records import FILE`: move an existing card store in (webapp/records/bulk.py).

    flask --app webapp records import cards.csv                      # CSV with the header line
    flask --app webapp records import cards.jsonl --report refused.tsv
    flask --app webapp records import export.txt --format jsonl --batch-size 2000

An operator's action on the server (the app's own settings and database user; audit actor
`cli:<os user>`). Run it again after a crash or a failure: it resumes after the last committed
batch, and a file already imported completely by the same user is not imported twice.

Output: the refused lines, one per line `line N<TAB>field<TAB>rule` (never the value), on stdout or
into --report; then a summary. A progress bar on stderr.

Exit status: 0 every line imported (or the file was already imported); 3 the import finished but
some lines were refused (listed in the report: fix them into a new file and import that); 1 nothing
or not everything was imported (a one-line reason and the next step on stderr); 2 a usage error.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import IO

import click
import sqlalchemy as sa
from flask import current_app
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from webapp.cli import actor
from webapp.records import bulk
from webapp.records.purge import records_cli
from webapp.services import services
from webapp.unit import Origin

__all__ = ["records_cli"]

EXIT_REFUSED_LINES = 3


def _read(path: Path) -> bytes:
    """The whole file, bounded: what is hashed (the job's key) is exactly what is imported."""
    try:
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise click.ClickException(f"{path.name}: not a regular file — give the path of a file")
            data = fh.read(bulk.MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise click.ClickException(
            f"cannot read {path.name}: {exc.strerror or type(exc).__name__} — check the path and permissions"
        ) from None
    return data


@records_cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(bulk.FORMATS),
    default=None,
    help="csv or jsonl; by default from the file name (.csv, .jsonl, .ndjson).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, bulk.MAX_BATCH),
    default=bulk.DEFAULT_BATCH,
    show_default=True,
    help="Lines per batch: one keyd round (three fields a card), one transaction, one audit record.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the refused lines here (line, field, rule; never a value) instead of stdout.",
)
def import_command(file: Path, fmt: str | None, batch_size: int, report_path: Path | None) -> None:
    """Import cards from a CSV or JSON-lines file (resumable; exit 3 when lines were refused)."""
    fmt = fmt or bulk.sniff_format(file.name)
    if fmt is None:
        raise click.ClickException(
            f"{file.name}: cannot tell the format from the name — add --format csv or --format jsonl"
        )
    data = _read(file)
    svc = services()
    out: IO[str] = sys.stdout
    if report_path is not None:
        out = report_path.open("w", encoding="utf-8")
    err = Console(stderr=True)
    importer = bulk.Importer(
        svc,
        origin=Origin(actor=actor(), ip="local"),
        crm_pattern=str(current_app.config["CRM_REF_PATTERN"]),
        batch_size=batch_size,
        on_refused=lambda r: print(r, file=out),
    )
    try:
        try:
            importer.check_file(data, fmt)
        except bulk.FileRefused as exc:
            raise click.ClickException(
                f"{exc.reason}: nothing was imported — fix the file and run the command again"
            ) from None
        with Progress(
            TextColumn(f"import {file.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        ) as bar:
            task = bar.add_task("import", total=max(0, len(bulk.split_lines(data)) - (fmt == "csv")))
            importer.progress = lambda n: bar.advance(task, n)
            try:
                report = importer.run_file(data, fmt)
            except bulk.FileRefused as exc:
                raise click.ClickException(
                    f"{exc.reason}: nothing was imported — fix the file and run the command again"
                ) from None
            except bulk.ImportFailed as exc:
                raise click.ClickException(
                    f"{exc.reason}: the batches committed so far are kept — run the same command again"
                    " to resume"
                ) from None
            except sa.exc.SQLAlchemyError as exc:
                raise click.ClickException(
                    f"database error ({type(exc).__name__}): nothing more was imported — check the database"
                    " with `flask --app webapp health`, then run the same command again"
                ) from None
    finally:
        if report_path:
            out.close()
    if report.already_finished:
        click.echo(f"import {report.job_id}: this file was already imported completely by {actor()}")
        return
    if report.resumed_after:
        click.echo(f"resumed after line {report.resumed_after} (handled by an earlier run)")
    click.echo(
        f"import {report.job_id}: accepted={report.accepted} refused={report.refused} "
        f"records_created={report.records_created} batches={report.batches}"
    )
    if report.refused:
        where = f"in {report_path}" if report_path else "above"
        click.echo(f"{report.refused} line(s) refused, listed {where}: fix them into a new file", err=True)
        raise SystemExit(EXIT_REFUSED_LINES)
