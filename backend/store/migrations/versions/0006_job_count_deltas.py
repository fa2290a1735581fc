"""job count deltas

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 16:30:00.000000

Job counts kept as appended deltas (issue 12 item 3): each status change inserts a row here
instead of updating its (task, status) row of ``job_counts``, which locked that row until
commit, so every write of one task waited for the one before and job rows and count rows were
locked in opposite orders (deadlocks on PostgreSQL). ``job_counts`` keeps its rows and becomes
the rolled-up part; nothing needs backfilling.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_count_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("old_status", sa.String(length=16), nullable=True),
        sa.Column("new_status", sa.String(length=16), nullable=True),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # BIGINT: a roll-up adds whole chunks to a count at once, and a busy task's completed count
    # may pass 2**31 over a store's life. Batch mode: SQLite changes a type by copying the table.
    with op.batch_alter_table("job_counts") as batch:
        batch.alter_column("count", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    # Fold what is left into job_counts first, so the counts stay true without the deltas.
    op.execute(
        "INSERT INTO job_counts (task, status, count)"
        " SELECT task, status, SUM(n) FROM ("
        "  SELECT task, new_status AS status, jobs AS n FROM job_count_deltas WHERE new_status IS NOT NULL"
        "  UNION ALL SELECT task, old_status, -jobs FROM job_count_deltas WHERE old_status IS NOT NULL"
        " ) AS moves WHERE true GROUP BY task, status"
        " ON CONFLICT (task, status) DO UPDATE SET count = job_counts.count + excluded.count"
    )
    op.drop_table("job_count_deltas")
    with op.batch_alter_table("job_counts") as batch:
        batch.alter_column("count", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
