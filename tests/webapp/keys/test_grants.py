"""The key-rotation maintenance user (db/grants-keys.sql) can do the rewrap and nothing more."""

from __future__ import annotations

import re

import pymysql
import pytest
import sqlalchemy as sa

from tests.webapp.conftest import MariaBackend
from tests.webapp.keys.conftest import KEYS_DB_USER, KEYS_GRANTS
from webapp.records.tables import ENCRYPTED_COLUMNS


def _granted_updates() -> dict[str, set[str]]:
    text = re.sub(r"--[^\n]*", "", KEYS_GRANTS.read_text())
    out: dict[str, set[str]] = {}
    for cols, table in re.findall(r"UPDATE \(([^)]*)\)\s+ON (\w+)", text):
        out.setdefault(table, set()).update(c.strip() for c in cols.split(","))
    return out


def test_every_encrypted_column_is_granted_and_nothing_else() -> None:
    # A new encrypted column missing from the grants would make the rewrap fail in production only.
    wanted = {t.name: {c.name for c in cols.values()} for t, cols in ENCRYPTED_COLUMNS.items()}
    assert _granted_updates() == wanted


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE cards SET last4 = '0000'",
        "UPDATE cards SET record_id = record_id",
        "UPDATE items SET retired_at = NULL",
        "DELETE FROM cards",
        "INSERT INTO audit_log (seq) VALUES (999999)",
        "UPDATE audit_head SET seq = 0",
        "SELECT * FROM users",
        "SELECT last4 FROM cards",
        "SELECT * FROM customer_records",
        "DROP TABLE key_rewrap_checkpoints",
    ],
)
def test_the_maintenance_user_is_refused_everything_else(
    maria_backend: MariaBackend, keys_db_password: str, statement: str
) -> None:
    # MariaDB only: SQLite has no users or grants.
    maria_backend.reset()
    url = maria_backend.server.url(KEYS_DB_USER, keys_db_password, maria_backend.database)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn, pytest.raises(sa.exc.DBAPIError) as caught:
            conn.execute(sa.text(statement))
        assert isinstance(caught.value.orig, pymysql.err.OperationalError | pymysql.err.ProgrammingError)
        assert caught.value.orig.args[0] in (1142, 1143)  # table / column access denied
    finally:
        engine.dispose()
