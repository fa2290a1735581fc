"""The models and the migrations never differ, so no endpoint can hit a missing column."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from backend.api.context import services
from backend.store.engine import migrate
from backend.store.models import Base


def test_models_match_a_freshly_migrated_database(make_store_url):
    url = make_store_url("fresh", migrated=False)
    migrate(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": _not_dialect_specific}
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


#: Migration 0013's search index, created by dialect with op.execute and not in the models: the
#: FTS5 table (and its shadow tables) on SQLite, the pg_trgm GIN index on PostgreSQL.
DIALECT_SPECIFIC = ("jobs_fts", "ix_jobs_search_trgm")


def _not_dialect_specific(obj, name, type_, reflected, compare_to) -> bool:
    return not (name or "").startswith(DIALECT_SPECIFIC)


def test_migrating_twice_is_harmless(make_store_url):
    url = make_store_url("twice", migrated=False)
    migrate(url)
    migrate(url)
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"jobs", "attempts", "alembic_version"} <= tables


@pytest.mark.sqlite_only(reason="SQLite's pragmas")
def test_the_store_runs_in_wal_mode_with_foreign_keys(app):
    with services(app).engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
