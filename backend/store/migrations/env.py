"""Alembic environment: migrations run online against the URL set by backend.store.engine."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from backend.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    # backend.store.engine passes its connection when it holds a lock on it (PostgreSQL).
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run them against a database")
run_migrations_online()
