"""The schema and engines: migrations match the tables, and each backend is set up for many workers."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask

from webapp.db.tables import metadata


def test_migrations_build_exactly_the_declared_schema(owner_engine: sa.Engine) -> None:
    with owner_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # Server-side defaults and index naming are not compared meaningfully; tables and columns are.
    assert [d for d in diff if d[0] in ("add_table", "remove_table", "add_column", "remove_column")] == []


def test_engine_settings_for_several_workers(app: Flask) -> None:
    engine = app.extensions["strongroom"].engine
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        else:
            isolation = conn.exec_driver_sql("SELECT @@tx_isolation").scalar()
            assert isolation == "READ-COMMITTED"


def test_the_app_user_holds_only_table_grants(app: Flask) -> None:
    engine = app.extensions["strongroom"].engine
    if engine.dialect.name == "sqlite":
        return  # no users on SQLite; the MariaDB run covers this
    with engine.connect() as conn:
        grants = [row[0] for row in conn.exec_driver_sql("SHOW GRANTS")]
    table_grants = [g for g in grants if "`strongroom`.`" in g]
    assert any("GRANT SELECT, INSERT ON `strongroom`.`audit_log`" in g for g in table_grants), grants
    assert not any("`strongroom`.*" in g for g in grants)
