"""history (issue 16)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 05:00:00.000000

Issue 16 item 3: the dashboard's charts read history the service keeps itself. ``job_minutes``
holds, per UTC minute and task, the jobs that completed and failed and the completed runs' times
(counts per bucket); ``queue_minutes`` one sample of each queue's depth per minute. The
housekeeping pass writes both and deletes rows older than HISTORY_DAYS.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backend.store.models

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_minutes",
        sa.Column("minute", backend.store.models.UTCDateTime(), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("run_ms", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "task"),
    )
    op.create_table(
        "queue_minutes",
        sa.Column("minute", backend.store.models.UTCDateTime(), nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "queue"),
    )


def downgrade() -> None:
    op.drop_table("queue_minutes")
    op.drop_table("job_minutes")
