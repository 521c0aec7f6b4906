"""SQLModel tables, the engine, the queries and the Alembic migrations."""
