"""retention (issue 16): the prune's indexes

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 05:00:00.000000

``ix_jobs_status_completed``: FAILED and CANCELLED jobs by end time (COMPLETED ones walk
``ix_jobs_completed``); ``ix_jobs_batch_live``: the live jobs of batches, so the prune's "does the
batch still have a live job" is one probe. Both partial: a plain submission writes to neither.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Spelled as backend/store/models.py spells them (a migration never imports the code it migrates for).
FAILED_OR_CANCELLED = "status = 'FAILED' OR status = 'CANCELLED'"
LIVE_BATCH_JOBS = "batch_id IS NOT NULL AND status IN ('PENDING', 'QUEUED', 'PROCESSING')"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_status_completed",
            ["status", "completed_at"],
            unique=False,
            sqlite_where=sa.text(FAILED_OR_CANCELLED),
            postgresql_where=sa.text(FAILED_OR_CANCELLED),
        )
        batch_op.create_index(
            "ix_jobs_batch_live",
            ["batch_id"],
            unique=False,
            sqlite_where=sa.text(LIVE_BATCH_JOBS),
            postgresql_where=sa.text(LIVE_BATCH_JOBS),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_batch_live")
        batch_op.drop_index("ix_jobs_status_completed")
