"""The owner-scoped existence check shared by every command on a job, batch or schedule.

A row that exists but belongs to another owner answers exactly as a missing one (404), so a
client can never learn that someone else's id exists.
"""

from __future__ import annotations

from typing import TypeVar

from backend.core.errors import NotFound

Row = TypeVar("Row")


def owned(row: Row | None, owner: str | None, what: str, key: str) -> Row:
    """Return ``row`` when it exists and, with ``owner``, is that owner's.

    Args:
        row: the row read by ``key`` (None when there is none); any object with ``.owner``.
        owner: the caller's scope; None for the operator, who sees every owner's rows.
        what: the kind of row, for the message ("job", "batch", "schedule").
        key: the id the caller asked for.

    Raises:
        NotFound: no such row, or it belongs to someone else (``no job 'job_1'``).
    """
    if row is None or (owner is not None and row.owner != owner):
        raise NotFound(f"no {what} {key!r}")
    return row
