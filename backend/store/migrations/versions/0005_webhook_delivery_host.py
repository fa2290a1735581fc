"""webhook delivery host

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 12:20:00.000000

The receiver's host name in a column of its own, so that the dispatcher can leave out hosts
(and owners) already at their concurrency cap in SQL: one host's thousands of due deliveries
no longer fill every page of a pass (issue 10 item 1). Existing rows are filled from their URL.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_CHUNK = 500


def _host(url: str | None) -> str:
    # The same value as backend.service.webhook_outbox.delivery_host (copied: a migration must not change
    # when the code it was written against does).
    try:
        return (urlsplit(url or "").hostname or "").lower()[:255]
    except ValueError:
        return ""


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(length=255), server_default="", nullable=False))

    connection = op.get_bind()
    deliveries = sa.table("webhook_deliveries", sa.column("id", sa.String), sa.column("url", sa.Text))
    hosts = sa.table("webhook_deliveries", sa.column("id", sa.String), sa.column("host", sa.String))
    after = ""
    while True:
        rows = connection.execute(
            sa.select(deliveries.c.id, deliveries.c.url)
            .where(deliveries.c.id > after)
            .order_by(deliveries.c.id)
            .limit(_CHUNK)
        ).all()
        if not rows:
            break
        filled = [{"row_id": row.id, "host": _host(row.url)} for row in rows if _host(row.url)]
        if filled:
            connection.execute(
                sa.update(hosts).where(hosts.c.id == sa.bindparam("row_id")).values(host=sa.bindparam("host")),
                filled,
            )
        after = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_column("host")
