"""webhook claim token

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 16:30:00.000000

A delivery's claim is a random token (with ``claimed_until`` from the database's clock), and
every write after the claim names it: a dispatcher whose claim lapsed and was taken over
writes nothing (issue 12 item 3). Nothing to fill: a claim made by the previous version
(no token) is still recorded by its ``claimed_until``, which a takeover changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_column("claim_token")
