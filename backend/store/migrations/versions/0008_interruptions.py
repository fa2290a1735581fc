"""interruptions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 19:45:00.000000

A run cut by the infrastructure (a worker killed, Redis lost mid-run) is no task failure
(issue 13 item 4): ``interruptions`` counts such runs apart from ``retry_count``, and
``max_interruptions`` is how many a job may have before it ends FAILED (a poison pill).
Server defaults, so that the rows already there and an API host of the previous version,
which names neither column in its INSERT, get 0 and 3.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("interruptions", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("max_interruptions", sa.Integer(), server_default="3", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("max_interruptions")
        batch_op.drop_column("interruptions")
