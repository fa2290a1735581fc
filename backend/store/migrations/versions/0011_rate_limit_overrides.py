"""rate limit overrides

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 01:30:00.000000

Issue 15 item 2: an admin may set a key's rate limit at run time (``PUT /rate-limits/<key>``).
``rate_limit_overrides`` records each such limit, when and by whom, so that it survives API,
worker and Redis restarts (Redis holds the workers' mirror of it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backend.store.models

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_overrides",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("limit_text", sa.String(length=40), nullable=False),
        sa.Column("set_by", sa.String(length=200), nullable=False),
        sa.Column("set_at", backend.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_overrides")
