"""search (issue 16)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 05:00:00.000000

Issue 16 item 2: ``GET /jobs`` filters answered from indexes. ``job_kwargs`` holds each job's
scalar top-level keyword arguments as text, with the job's owner (written with the job's INSERT;
the jobs already stored are backfilled); a batch's jobs get
a ``(batch_id, created_at, id)`` index (replacing ``ix_jobs_batch``); ``q`` gets a trigram index:
on SQLite the FTS5 table ``jobs_fts`` (external content: jobs' rowid; triggers keep it in step on
insert, on a change of task, error or progress message, and on delete), on PostgreSQL the
pg_trgm GIN index ``ix_jobs_search_trgm``. Neither is in the models (dialect-specific; see
tests/test_migrations.py).
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

import backend.store.models
from backend.core.job_filters import indexed_kwargs

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


#: Jobs read per backfill batch (their kwargs rows are written in one executemany).
_BACKFILL_BATCH = 1000


def _backfill_kwargs(bind) -> None:
    """The jobs stored before this revision get their kwargs rows too, written by the submission
    path's own function (``indexed_kwargs``): the same text for every number (SQL's real-to-text and
    jsonb's normalising did not match ``json.dumps``) and the same first 20 in the kwargs' own order
    (jsonb orders its keys). Read as the stored JSON text, in batches of ``_BACKFILL_BATCH`` jobs by id."""
    jobs = sa.table(
        "jobs", sa.column("id", sa.String), sa.column("owner", sa.String), sa.column("created_at"), sa.column("kwargs")
    )
    kwargs_rows = sa.table(
        "job_kwargs",
        *(sa.column(name) for name in ("job_id", "owner", "name", "value", "created_at")),
    )
    last = None
    while True:
        query = sa.select(jobs.c.id, jobs.c.owner, jobs.c.created_at, sa.cast(jobs.c.kwargs, sa.Text))
        if last is not None:
            query = query.where(jobs.c.id > last)
        batch = bind.execute(query.order_by(jobs.c.id).limit(_BACKFILL_BATCH)).all()
        if not batch:
            return
        rows = [
            {"job_id": job_id, "owner": owner, "name": name, "value": value, "created_at": created_at}
            for job_id, owner, created_at, stored in batch
            for name, value in indexed_kwargs(_loads(stored))
        ]
        if rows:
            bind.execute(kwargs_rows.insert(), rows)
        last = batch[-1][0]


def _loads(stored: str | None) -> dict | None:
    """A job's stored kwargs JSON as the submission path had it (None: not an object, or not JSON)."""
    try:
        kwargs = json.loads(stored) if stored else None
    except ValueError:
        return None
    return kwargs if isinstance(kwargs, dict) else None


def upgrade() -> None:
    op.create_table(
        "job_kwargs",
        sa.Column("job_id", backend.store.models.Key(length=40), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("created_at", backend.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "name"),
    )
    _backfill_kwargs(op.get_bind())
    op.create_index("ix_job_kwargs_lookup", "job_kwargs", ["name", "value", "created_at", "job_id"], unique=False)
    # A tenant's kwargs filter walks its own rows only, not every owner's with that value.
    op.create_index(
        "ix_job_kwargs_owner_lookup", "job_kwargs", ["owner", "name", "value", "created_at", "job_id"], unique=False
    )
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
    op.drop_index("ix_job_kwargs_owner_lookup", table_name="job_kwargs")
    op.drop_index("ix_job_kwargs_lookup", table_name="job_kwargs")
    op.drop_table("job_kwargs")
