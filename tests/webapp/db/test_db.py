"""The schema and engines: migrations match the tables, and each backend is set up for many workers."""

from __future__ import annotations

import ast
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask

from webapp.db.schema import TABLES, metadata

WEBAPP = Path(__file__).resolve().parents[3] / "webapp"


def test_migrations_build_exactly_the_declared_schema(owner_engine: sa.Engine) -> None:
    with owner_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # Server-side defaults and index naming are not compared meaningfully; tables and columns are.
    assert [d for d in diff if d[0] in ("add_table", "remove_table", "add_column", "remove_column")] == []


def _tables_defined(source: Path) -> list[str]:
    """The name of every `Table(...)` a source file defines (a table made any other way is refused)."""
    found = []
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "Table")
            or (isinstance(node.func, ast.Name) and node.func.id == "Table")
        ):
            first = node.args[0] if node.args else None
            where = f"{source}:{node.lineno}: a table whose name is not a literal"
            assert isinstance(first, ast.Constant), where
            assert isinstance(first.value, str), where
            found.append(first.value)
    return found


def test_the_registry_lists_every_table_defined_in_webapp() -> None:
    sources = sorted(WEBAPP.rglob("*.py"))
    defined = [name for source in sources for name in _tables_defined(source)]
    assert len(defined) >= 13, "the search found too few tables: has the way tables are written changed?"
    assert sorted(defined) == sorted(t.name for t in TABLES)
    # One schema: every listed table is on the metadata the migrations compare with, and nothing else.
    assert all(t.metadata is metadata for t in TABLES)
    assert set(metadata.tables) == {t.name for t in TABLES}


def test_the_table_search_sees_every_way_of_writing_a_table(tmp_path: Path) -> None:
    source = tmp_path / "tables.py"
    source.write_text(
        "import sqlalchemy as sa\nfrom sqlalchemy import Table\n"
        "a = sa.Table('one', md)\nb = Table('two', md)\nc = sqlalchemy.Table('three', md)\n"
        "d = sa.table('lightweight')\n"
    )
    assert _tables_defined(source) == ["one", "two", "three"]


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
