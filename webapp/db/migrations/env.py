"""Alembic environment: run by `flask --app webapp db upgrade` (and by the tests) with a live connection."""

from __future__ import annotations

from alembic import context

from webapp.db.engine import make_engine
from webapp.db.schema import metadata  # every table: the registry names them all

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
else:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
