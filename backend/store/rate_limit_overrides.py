"""Store: the rate limits set at run time per key (``rate_limit_overrides``).

The record is what an override is: Redis's hash (backend/broker/limit_overrides.py) is its mirror
for the workers, put back from here by the reconciler's pass. Setting a key's limit again replaces
its limit, author and time; clearing a key without one changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from backend.store import clock
from backend.store.engine import transaction
from backend.store.models import RateLimitOverride

_OVERRIDES = RateLimitOverride.__table__


@dataclass(frozen=True)
class Override:
    """A key's limit set at run time: the limit text, by whom and when (the store's clock)."""

    key: str
    limit: str
    set_by: str
    set_at: datetime


def _of(row) -> Override:
    return Override(row.key, row.limit_text, row.set_by, row.set_at)


def set_limit(sessions: sessionmaker[Session], key: str, limit: str, by: str) -> tuple[Override, str | None]:
    """Record ``limit`` for ``key``; (the override, the limit it replaced or None)."""
    with transaction(sessions) as session:
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        previous = session.execute(select(_OVERRIDES.c.limit_text).where(_OVERRIDES.c.key == key)).scalar()
        # One upsert that answers the row it left: two admins setting the same key at once leave one
        # row (the later one), no error, and a DELETE landing meanwhile cannot make a read miss it.
        statement = insert(_OVERRIDES).values(key=key, limit_text=limit, set_by=by, set_at=clock.now_for_write(dialect))
        row = session.execute(
            statement.on_conflict_do_update(
                index_elements=["key"],
                set_={column: statement.excluded[column] for column in ("limit_text", "set_by", "set_at")},
            ).returning(*_OVERRIDES.c)
        ).one()
    return _of(row), previous


def clear(sessions: sessionmaker[Session], key: str) -> str | None:
    """Remove ``key``'s override; the limit it had, or None when it had none."""
    with transaction(sessions) as session:
        removed = session.execute(
            delete(_OVERRIDES).where(_OVERRIDES.c.key == key).returning(_OVERRIDES.c.limit_text)
        ).first()
    return removed[0] if removed is not None else None


def overrides(sessions: sessionmaker[Session]) -> dict[str, Override]:
    """Every recorded override, by key (an admin sets few: read whole)."""
    with sessions() as session:
        return {row.key: _of(row) for row in session.execute(select(_OVERRIDES).order_by(_OVERRIDES.c.key))}
