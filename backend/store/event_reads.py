"""The store read behind live event streams: the status and attempt of every watched job.

The API's event hub polls it every EVENTS_POLL_SECONDS for all the jobs it has streams open
on, so it is one indexed SELECT of two small columns for all of them, on a pooled connection
(no ORM session), and nothing at all when nobody watches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from backend.store.models import Job

# One statement with ONE parameter however many jobs are watched (an array on PostgreSQL, a JSON
# list on SQLite): an IN-list of 500 bound parameters, twice per poll for 1,000 streams, cost the
# streams process 9.4 ms of CPU per poll on PostgreSQL (SQLAlchemy expanding and psycopg adapting
# each parameter) and the server 2.8 ms; this form 3.2 and 1.4 ms (SQLite 4.8 -> 2.7 ms), measured
# in process with 1,000 ids (issue 17, T6: at 10 polls a second that was ~12% of a core).
_STATUS_KEYS = {
    "postgresql": text(f"SELECT id, status, attempt FROM {Job.__tablename__} WHERE id = ANY(:ids)"),
    "sqlite": text(
        f"SELECT id, status, attempt FROM {Job.__tablename__} WHERE id IN (SELECT value FROM json_each(:ids))"
    ),
}


def status_keys(sessions: sessionmaker[Session], job_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """``{job_id: (status, attempt)}`` for those of ``job_ids`` that exist.

    Raises:
        StoreUnavailable: the store is down (one of its errors).
    """
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    with sessions.kw["bind"].connect() as connection:
        if connection.dialect.name == "postgresql":
            rows = connection.execute(_STATUS_KEYS["postgresql"], {"ids": ids})
        else:
            rows = connection.execute(_STATUS_KEYS["sqlite"], {"ids": json.dumps(ids)})
        return {job_id: (status, attempt) for job_id, status, attempt in rows}
