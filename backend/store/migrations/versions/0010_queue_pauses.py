"""queue pauses

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 23:55:00.000000

Issue 15 item 3: an operator may pause a queue. ``queue_pauses`` records each paused queue, when
and by whom, so that a pause survives API, worker and Redis restarts (Redis holds the workers'
mirror of it). ``ix_jobs_completed`` lets ``GET /queues`` count the jobs completed in the last
minute by a range of the index rather than a walk of every COMPLETED job: partial (a job enters it
once, when it completes, so no other write pays for it) and covering on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backend.store.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_pauses",
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("paused_at", backend.store.models.UTCDateTime(), nullable=False),
        sa.Column("paused_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("queue"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_completed",
            ["completed_at", "priority", "status"],
            unique=False,
            sqlite_where=sa.text("status = 'COMPLETED'"),
            postgresql_where=sa.text("status = 'COMPLETED'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_completed")
    op.drop_table("queue_pauses")
