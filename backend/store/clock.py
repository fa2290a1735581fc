"""The store's clock: the one time every host agrees on.

Hosts' clocks drift apart, so wherever two hosts compare times (a claim that lapses, a job
that has been quiet for too long) the time comes from the database. On PostgreSQL that is the
server's ``statement_timestamp()``; a SQLite store lives on one host, whose clock it uses.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from backend.store.models import utcnow

_NOW = text("SELECT statement_timestamp()")


def now(bind: Engine | Connection | Session) -> datetime:
    """The database's time now, an aware UTC datetime (this host's clock on SQLite)."""
    dialect = bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect
    if dialect.name != "postgresql":
        return utcnow()
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            value = connection.execute(_NOW).scalar_one()
    else:
        value = bind.execute(_NOW).scalar_one()
    return value.astimezone(UTC)


def now_for_write(dialect: str):
    """What a write stores as "now": on PostgreSQL an SQL expression that the server evaluates
    (its ``statement_timestamp()`` as naive UTC, as the columns hold it); on SQLite this host's time."""
    if dialect != "postgresql":
        return utcnow()
    return func.timezone("UTC", func.statement_timestamp())


def store_now(sessions: sessionmaker[Session]) -> datetime:
    """``now`` read through a session of ``sessions``, for callers that hold no session."""
    with sessions() as session:
        return now(session)
