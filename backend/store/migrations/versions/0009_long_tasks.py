"""long tasks: snoozes, checkpoints and per-job logs

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 22:30:00.000000

Issue 14. A task may snooze (run again later, no failure counted): ``snoozes`` counts them and
``max_snoozes`` ends a job that snoozes for ever. It may save a checkpoint that its next attempt
reads: ``checkpoint`` (JSON), the attempt that saved it and when. What it logs is kept in
``job_logs``, capped per job: ``log_lines`` and ``log_bytes`` on the job count what is kept, so
the cap costs no COUNT. Server defaults, so that the rows already there and an API host of the
previous version, which names none of these columns in its INSERT, get the defaults.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backend.store.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("snoozes", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("max_snoozes", sa.Integer(), server_default="100", nullable=False))
        batch_op.add_column(sa.Column("checkpoint", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("checkpoint_attempt", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("checkpoint_at", backend.store.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("log_lines", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("log_bytes", sa.Integer(), server_default="0", nullable=False))

    op.create_table(
        "job_logs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", backend.store.models.UTCDateTime(), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job_logs", schema=None) as batch_op:
        batch_op.create_index("ix_job_logs_job", ["job_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_job_logs_job")
    op.drop_table("job_logs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("log_bytes")
        batch_op.drop_column("log_lines")
        batch_op.drop_column("checkpoint_at")
        batch_op.drop_column("checkpoint_attempt")
        batch_op.drop_column("checkpoint")
        batch_op.drop_column("max_snoozes")
        batch_op.drop_column("snoozes")
