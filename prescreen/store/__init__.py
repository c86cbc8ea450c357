"""Durable state: the database (SQLAlchemy 2 + Alembic) and the content-addressed blob store."""

from prescreen.store import keyring_store  # noqa: F401  (registers the database keyring storage)
