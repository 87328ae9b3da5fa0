"""The audit log as CSV, for the auditor's spreadsheet.

Bounded: at most AUDIT_EXPORT_MAX_ROWS records. When more match the filter, the export is refused with
a message asking for a narrower filter, never silently cut short: a truncated file looks complete.

Spreadsheet formula injection: a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return
gets a leading apostrophe, so a spreadsheet shows it as text instead of running it (OWASP's rule).
Audit fields can carry what a client sent (a path, a login name), so any of them may start that way.
That includes the log's placeholder "-" (nobody logged in, no detail): it is exported as `'-`.
Every field also goes through the card-number mask once more (records are masked when written; a
row that reached the table another way is masked here too).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from webapp.redact import mask_pans

COLUMNS = ("seq", "at", "actor", "event", "outcome", "ip", "cert_serial", "resource", "detail", "hash")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
BOM = "\ufeff"  # so that a spreadsheet opening the file reads it as UTF-8


def neutralise(cell: str) -> str:
    """The cell as text a spreadsheet will not evaluate."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def to_csv(rows: Iterable[Any]) -> str:
    """The header and one line per record (anything with the attributes of COLUMNS)."""
    out = io.StringIO()
    out.write(BOM)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([neutralise(mask_pans(str(getattr(row, name)))) for name in COLUMNS])
    return out.getvalue()


def filename(now: datetime) -> str:
    """ASCII letters, digits and '-' only: nothing from the request goes into the header."""
    return f"strongroom-audit-{now.strftime('%Y%m%dT%H%M%SZ')}.csv"
