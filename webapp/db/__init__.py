"""Database access: the engine factory, the schema and its migrations."""
