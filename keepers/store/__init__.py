"""Durable state: SQL tables (sqlmodel), engine setup for SQLite and PostgreSQL, migrations,
and the projection of chain events into orders, fills, positions and vaults."""
