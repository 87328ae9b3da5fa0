"""Purging what was retired longer ago than the retention period (PCI DSS 3.2.1: card data is kept
only as long as the business needs it, then deleted).

Retired means no longer readable (docs/webapp.md, "Retirement"): a retired card or item, or anything
in a retired record, is never revealed again, only its masked form is listed. Once the retirement is
older than `RETIRED_RETENTION_DAYS`, `flask --app webapp records purge-retired` deletes the row, its
ciphertexts with it; the record itself stays (it holds a CRM reference, no card data), and the audit
trail keeps who added, retired and purged what (masked, as always).

The web app's own database user has no DELETE on cards or items: in production the command connects
as a purge user that has only that (`STRONGROOM_PURGE_DATABASE_URL`, grants in docs/webapp.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import click
import sqlalchemy as sa
from flask import current_app

from webapp.cli import Group, actor
from webapp.clock import to_db
from webapp.config import RANGES
from webapp.db.engine import make_engine
from webapp.events import Event
from webapp.records.tables import cards, customer_records, items
from webapp.services import services
from webapp.unit import Origin


@dataclass(frozen=True)
class Purged:
    cards: int
    items: int


def _expired(table: sa.Table, cutoff: datetime) -> sa.ColumnElement[bool]:
    """Rows retired before the cutoff, or in a record retired before it."""
    old_records = sa.select(customer_records.c.id).where(customer_records.c.retired_at <= to_db(cutoff))
    return sa.or_(table.c.retired_at <= to_db(cutoff), table.c.record_id.in_(old_records))


def purge_retired(
    conn: sa.Connection, *, now: datetime, retention_days: int, dry_run: bool = False
) -> Purged:
    """Delete (or, with dry_run, count) every card and item whose retirement is past the retention."""
    lo, hi = RANGES["RETIRED_RETENTION_DAYS"]
    if not lo <= retention_days <= hi:  # never 0: that would purge what was retired a second ago
        raise ValueError(f"retention must be {lo} to {hi} days")
    cutoff = now - timedelta(days=retention_days)
    counts = []
    for table in (cards, items):
        where = _expired(table, cutoff)
        if dry_run:
            counts.append(
                int(conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one())
            )
        else:
            counts.append(int(conn.execute(sa.delete(table).where(where)).rowcount))
    return Purged(cards=counts[0], items=counts[1])


records_cli = Group("records", help="Import cards in bulk; purge cards and items retired past retention.")


@records_cli.command("purge-retired")
@click.option("--dry-run", is_flag=True, help="Count what would be purged; delete nothing.")
def purge_retired_command(dry_run: bool) -> None:
    """Delete cards and items retired longer ago than RETIRED_RETENTION_DAYS (audited)."""
    svc = services()
    days = int(current_app.config["RETIRED_RETENTION_DAYS"])
    now = svc.clock.now()
    url = current_app.config.get("PURGE_DATABASE_URL")
    uow = svc.unit(Origin(actor=actor(), ip="local"))
    # Never a purge without its audit record: with the app's own database the delete and the record are
    # one transaction; with the purge user's, the delete is committed only after the record was.
    engine: sa.Engine | None = make_engine(str(url)) if url else None
    conn = engine.connect() if engine is not None else uow.conn
    tx = conn.begin() if engine is not None else None
    try:
        try:
            purged = purge_retired(conn, now=now, retention_days=days, dry_run=dry_run)
        except sa.exc.SQLAlchemyError as exc:
            if tx is not None:
                tx.rollback()
            uow.discard_writes()
            uow.record(Event.RECORDS_PURGED, ok=False, resource="records", detail=f"db:{type(exc).__name__}")
            uow.commit()
            raise click.ClickException(
                f"database error ({type(exc).__name__}): nothing was purged — "
                "check the database with `flask --app webapp health`"
            ) from None
        detail = f"cards={purged.cards} items={purged.items} retention_days={days}"
        uow.record(
            Event.RECORDS_PURGED, ok=True, resource="records", detail=detail + (" dry_run" if dry_run else "")
        )
        try:
            uow.commit()
        except sa.exc.SQLAlchemyError:
            if tx is not None:
                tx.rollback()
            raise click.ClickException(
                "the database refused the audit record: nothing was purged — "
                "check the database with `flask --app webapp health`"
            ) from None
        if tx is not None:
            tx.commit()
    finally:
        uow.close()
        if engine is not None:
            conn.close()
            engine.dispose()
    click.echo(("would purge" if dry_run else "purged") + f": {detail}")
