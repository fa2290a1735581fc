"""Whether the job store answers, for ``GET /monitoring/health``."""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError


def problem(engine: Engine) -> str | None:
    """None when the store runs a trivial query, else the error's class name (never its text,
    which may hold the database URL)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return exc.__class__.__name__
    return None
