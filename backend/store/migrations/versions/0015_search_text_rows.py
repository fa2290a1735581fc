"""search index: only jobs with text of their own (issue 17)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 14:45:00.000000

SQLite's q index (``jobs_fts``, 0013) held a row for every job, written by a trigger with each
job's INSERT: the trigram index of its task name, the same few trigrams for most jobs. That was
about a seventh of a submission's CPU on SQLite (issue 17). A job's task name is searched through
the task names instead (``backend/store/job_search.py``: the tasks whose name holds q, from the
names the jobs hold), so the index now holds only the jobs with an error or a progress message: a new job
writes nothing to it, and a job enters it when it first gets either. PostgreSQL: unchanged.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_HAS_TEXT = "({0}.error IS NOT NULL OR {0}.progress_message IS NOT NULL)"
_CHANGED = (
    "(old.task IS NOT new.task OR old.error IS NOT new.error OR old.progress_message IS NOT new.progress_message)"
)
_INSERT = (
    "INSERT INTO jobs_fts(rowid, task, error, progress_message) "
    "VALUES (new.rowid, new.task, new.error, new.progress_message);"
)
_DELETE = (
    "INSERT INTO jobs_fts(jobs_fts, rowid, task, error, progress_message) "
    "VALUES ('delete', old.rowid, old.task, old.error, old.progress_message);"
)
_OLD, _NEW = _HAS_TEXT.format("old"), _HAS_TEXT.format("new")
_ON_UPDATE = "AFTER UPDATE OF task, error, progress_message ON jobs WHEN " + _CHANGED
#: Disjoint conditions, so that at most one trigger fires for a row, and a row's old entry always
#: goes before its new one (FTS5 refuses a rowid it holds).
_TRIGGERS = [
    f"CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs WHEN {_NEW} BEGIN {_INSERT} END",
    f"CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs WHEN {_OLD} BEGIN {_DELETE} END",
    f"CREATE TRIGGER jobs_fts_update {_ON_UPDATE} AND {_OLD} AND {_NEW} BEGIN {_DELETE} {_INSERT} END",
    f"CREATE TRIGGER jobs_fts_update_gone {_ON_UPDATE} AND {_OLD} AND NOT {_NEW} BEGIN {_DELETE} END",
    f"CREATE TRIGGER jobs_fts_update_new {_ON_UPDATE} AND NOT {_OLD} AND {_NEW} BEGIN {_INSERT} END",
]
#: The index refilled from the jobs with text (the same two statements as ``backend.store.vacuum``).
_REFILL = [
    "INSERT INTO jobs_fts(jobs_fts) VALUES ('delete-all')",
    "INSERT INTO jobs_fts(rowid, task, error, progress_message) SELECT rowid, task, error, progress_message "
    f"FROM jobs WHERE {_HAS_TEXT.format('jobs')}",
]
_0013_TRIGGERS = [
    f"CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs BEGIN {_INSERT} END",
    f"CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs BEGIN {_DELETE} END",
    f"CREATE TRIGGER jobs_fts_update {_ON_UPDATE} BEGIN {_DELETE} {_INSERT} END",
]
_ALL = ("jobs_fts_update_new", "jobs_fts_update_gone", "jobs_fts_update", "jobs_fts_delete", "jobs_fts_insert")


def _set_triggers(triggers: list[str]) -> None:
    """Drop every trigger either revision made, then create ``triggers``."""
    for trigger in _ALL:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for statement in triggers:
        op.execute(statement)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        return
    _set_triggers(_TRIGGERS)
    # The jobs already stored (a fresh store has none: nothing to refill).
    if op.get_bind().exec_driver_sql("SELECT 1 FROM jobs LIMIT 1").first() is not None:
        for statement in _REFILL:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        return
    _set_triggers(_0013_TRIGGERS)
    op.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')")
