"""The pipeline steps run on the store tests' databases (SQLite and PostgreSQL)."""

from tests.store.conftest import blobs, database_url, postgres_database, postgres_server, sessions

__all__ = ["blobs", "database_url", "postgres_database", "postgres_server", "sessions"]
