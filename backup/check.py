"""After a restore: does every stored field still open through keyd?

Each ciphertext goes to keyd's rewrap, which authenticates it (key version, record id and field as
associated data) exactly as a decrypt would, but returns a new ciphertext instead of the plaintext:
nothing secret leaves keyd, and rewraps are not charged to the decrypt budgets, so a restore check of
every record does not exhaust the staff's daily reveals. The new ciphertexts are thrown away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from keyd.client import Context
from keyd.errors import KeydError, Sealed, Unavailable
from webapp.keys.service import MAX_BATCH, Rewrapping
from webapp.records.tables import ENCRYPTED_COLUMNS


@dataclass
class CheckReport:
    records: int = 0  # rows of encrypted tables
    fields: int = 0
    decryptable: int = 0
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)  # table, id, field, reason

    @property
    def ok(self) -> bool:
        return not self.failures and self.decryptable == self.fields


def check_decryptable(
    engine: sa.Engine, keyd: Rewrapping, *, progress: Callable[[int], None] = lambda _n: None
) -> CheckReport:
    report = CheckReport()
    for table, columns in ENCRYPTED_COLUMNS.items():
        (pk,) = table.primary_key.columns
        names = list(columns)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(pk, *columns.values()).order_by(pk)).all()
        report.records += len(rows)
        items: list[tuple[Context, bytes, Any]] = [
            (Context(str(r[0]), name), bytes(r[i]), r[0])
            for r in rows
            for i, name in enumerate(names, start=1)
            if r[i] is not None
        ]
        report.fields += len(items)
        for start in range(0, len(items), MAX_BATCH):
            chunk = items[start : start + MAX_BATCH]
            results = keyd.rewrap_batch(
                [(c, b) for c, b, _ in chunk], actor="backup-check", purpose="backup.check"
            )
            for (ctx, _blob, rid), result in zip(chunk, results, strict=True):
                if isinstance(result, (Sealed, Unavailable)):
                    raise result
                if isinstance(result, KeydError):
                    report.failures.append(
                        (table.name, str(rid), ctx.field, result.reason or result.code.value)
                    )
                else:
                    report.decryptable += 1
            progress(len(chunk))
    return report
