"""The store read behind live event streams: the status and attempt of every watched job.

The API's event hub polls it every EVENTS_POLL_SECONDS for all the jobs it has streams open
on, so it is one indexed SELECT of two small columns per chunk of ids, on a pooled connection
(no ORM session), and nothing at all when nobody watches.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from backend.store.models import Job

#: Ids per IN-list: well under SQLite's bound-parameter limit, and a short statement.
CHUNK = 500

_STATUS_KEYS = select(Job.id, Job.status, Job.attempt).where(Job.id.in_(bindparam("ids", expanding=True)))


def status_keys(sessions: sessionmaker[Session], job_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """``{job_id: (status, attempt)}`` for those of ``job_ids`` that exist.

    Raises:
        StoreUnavailable: the store is down (one of its errors).
    """
    ids = list(dict.fromkeys(job_ids))
    found: dict[str, tuple[str, int]] = {}
    if not ids:
        return found
    with sessions.kw["bind"].connect() as connection:
        for start in range(0, len(ids), CHUNK):
            rows = connection.execute(_STATUS_KEYS, {"ids": ids[start : start + CHUNK]})
            found.update((row.id, (row.status, row.attempt)) for row in rows)
    return found
