"""search (issue 16)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 05:00:00.000000

Issue 16 item 2: ``GET /jobs`` filters answered from indexes. ``job_kwargs`` holds each job's
scalar top-level keyword arguments as text (written with the job's INSERT); a batch's jobs get
a ``(batch_id, created_at, id)`` index (replacing ``ix_jobs_batch``); ``q`` gets a trigram index:
on SQLite the FTS5 table ``jobs_fts`` (external content: jobs' rowid; triggers keep it in step on
insert, on a change of task, error or progress message, and on delete), on PostgreSQL the
pg_trgm GIN index ``ix_jobs_search_trgm``. Neither is in the models (dialect-specific; see
tests/test_migrations.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backend.store.models

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_PG_TEXT = "lower(task || ' ' || coalesce(error, '') || ' ' || coalesce(progress_message, ''))"
_FTS_INSERT = (
    "INSERT INTO jobs_fts(rowid, task, error, progress_message) "
    "VALUES (new.rowid, new.task, new.error, new.progress_message);"
)
_FTS_DELETE = (
    "INSERT INTO jobs_fts(jobs_fts, rowid, task, error, progress_message) "
    "VALUES ('delete', old.rowid, old.task, old.error, old.progress_message);"
)
_SQLITE_UP = [
    "CREATE VIRTUAL TABLE jobs_fts USING fts5(task, error, progress_message, content='jobs', tokenize='trigram')",
    f"CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs BEGIN {_FTS_INSERT} END",
    f"CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs BEGIN {_FTS_DELETE} END",
    # Only when the text changed: a status write that sets error to what it was costs nothing.
    "CREATE TRIGGER jobs_fts_update AFTER UPDATE OF task, error, progress_message ON jobs "
    "WHEN old.task IS NOT new.task OR old.error IS NOT new.error "
    f"OR old.progress_message IS NOT new.progress_message BEGIN {_FTS_DELETE} {_FTS_INSERT} END",
]
#: The jobs already stored (a fresh store has none: nothing to read).
_FTS_REBUILD = "INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')"


# The jobs stored before this revision get their kwargs rows too (as backend.core.job_filters.
# indexed_kwargs writes them: scalar top-level values, the name a keyword argument's, the text
# at most 200 characters; strings as themselves, numbers, booleans and null as their JSON text).
_SQLITE_BACKFILL = """
INSERT INTO job_kwargs (job_id, name, value, created_at)
SELECT job_id, name, value, created_at FROM (
    SELECT jobs.id AS job_id, e.key AS name, jobs.created_at AS created_at,
           CASE e.type WHEN 'text' THEN e.value WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'
                WHEN 'null' THEN 'null' ELSE CAST(e.value AS TEXT) END AS value,
           row_number() OVER (PARTITION BY jobs.id ORDER BY e.id) AS n
    FROM jobs, json_each(jobs.kwargs) AS e
    WHERE json_valid(jobs.kwargs) AND json_type(jobs.kwargs) = 'object'
      AND e.type IN ('text', 'integer', 'real', 'true', 'false', 'null')
      AND length(e.key) BETWEEN 1 AND 100 AND e.key GLOB '[A-Za-z_]*' AND e.key NOT GLOB '*[^A-Za-z0-9_]*'
) WHERE length(value) <= 200 AND instr(value, char(0)) = 0 AND n <= 20
"""
_PG_BACKFILL = """
INSERT INTO job_kwargs (job_id, name, value, created_at)
SELECT job_id, name, value, created_at FROM (
    SELECT jobs.id AS job_id, e.key AS name, jobs.created_at AS created_at,
           CASE jsonb_typeof(e.value) WHEN 'string' THEN e.value #>> '{}' ELSE e.value::text END AS value,
           row_number() OVER (PARTITION BY jobs.id) AS n
    FROM jobs, jsonb_each(
        -- jsonb refuses an escaped NUL (PostgreSQL text holds none): such a job's kwargs are skipped.
        CASE WHEN json_typeof(jobs.kwargs) = 'object' AND strpos(jobs.kwargs::text, '\\u0000') = 0
             THEN jobs.kwargs::jsonb END
    ) AS e
    WHERE jsonb_typeof(e.value) IN ('string', 'number', 'boolean', 'null')
      AND e.key ~ '^[A-Za-z_][A-Za-z0-9_]{0,99}$'
) AS pairs WHERE length(value) <= 200 AND n <= 20
"""


def upgrade() -> None:
    op.create_table(
        "job_kwargs",
        sa.Column("job_id", backend.store.models.Key(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("created_at", backend.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "name"),
    )
    op.execute(_PG_BACKFILL if op.get_bind().dialect.name == "postgresql" else _SQLITE_BACKFILL)
    op.create_index("ix_job_kwargs_lookup", "job_kwargs", ["name", "value", "created_at", "job_id"], unique=False)
    op.create_index("ix_jobs_batch_created", "jobs", ["batch_id", "created_at", "id"], unique=False)
    op.drop_index("ix_jobs_batch", table_name="jobs")
    # With id: a schedule's jobs newest first need no sort of equal times either.
    op.drop_index("ix_jobs_schedule_created", table_name="jobs")
    op.create_index("ix_jobs_schedule_created", "jobs", ["schedule_id", "created_at", "id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(f"CREATE INDEX ix_jobs_search_trgm ON jobs USING gin (({_PG_TEXT}) gin_trgm_ops)")
    else:
        for statement in _SQLITE_UP:
            op.execute(statement)
        if op.get_bind().exec_driver_sql("SELECT 1 FROM jobs LIMIT 1").first() is not None:
            op.execute(_FTS_REBUILD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_jobs_search_trgm")
    else:
        for trigger in ("jobs_fts_update", "jobs_fts_delete", "jobs_fts_insert"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS jobs_fts")
    op.create_index("ix_jobs_batch", "jobs", ["batch_id"], unique=False)
    op.drop_index("ix_jobs_schedule_created", table_name="jobs")
    op.create_index("ix_jobs_schedule_created", "jobs", ["schedule_id", "created_at"], unique=False)
    op.drop_index("ix_jobs_batch_created", table_name="jobs")
    op.drop_index("ix_job_kwargs_lookup", table_name="job_kwargs")
    op.drop_table("job_kwargs")
