"""The store's reads behind ``GET /jobs/<id>`` and ``GET /jobs``: a job's stamp, a page of jobs.

The stamp (owner, ``updated_at``) is read on every poll of a job, so it skips the ORM and
SQLAlchemy's statement handling: one statement compiled once, run on a pooled DB-API
connection. ``backend.service.job_reads`` compares it with what it served last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Row, bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from backend.core.job_filters import JobFilter
from backend.store.job_search import QProbe, q_probe, search
from backend.store.models import Job

#: Rows read from the store at a time while a page of GET /jobs is built.
LIST_FETCH = 16

_STAMP = select(Job.owner, Job.updated_at).where(Job.id == bindparam("id"))


class Stamp(NamedTuple):
    """What changes whenever a job's fields do; compared as the database returns it."""

    owner: str
    updated_at: object


class JobStamps:
    """Reads a job's (owner, ``updated_at``) as the database returns them, on a raw cursor."""

    def __init__(self, engine: Engine):
        self.engine = engine
        compiled = _STAMP.compile(dialect=engine.dialect)
        self._sql = str(compiled)
        self._positional = bool(compiled.positional)
        self._dbapi_error = engine.dialect.loaded_dbapi.Error
        # PostgreSQL: the SELECT runs in autocommit, one round trip instead of three (psycopg's
        # BEGIN, the SELECT, the pool's ROLLBACK on return); about 40% less CPU per poll, in the
        # API and in the server. SQLite's driver begins no transaction for a SELECT anyway.
        self._autocommit = engine.dialect.name == "postgresql"

    def read(self, job_id: str) -> Stamp | None:
        """The job's ``(owner, updated_at)``; None when there is no such job."""
        params = (job_id,) if self._positional else {"id": job_id}
        dbapi_error = self._dbapi_error
        try:
            connection = self.engine.raw_connection()
            try:
                if self._autocommit:
                    connection.driver_connection.autocommit = True
                try:
                    cursor = connection.cursor()
                    cursor.execute(self._sql, params)
                    row = cursor.fetchone()
                    cursor.close()
                finally:
                    if self._autocommit:
                        self._leave_autocommit(connection)
            finally:
                connection.close()
        except dbapi_error as exc:
            # As SQLAlchemy would raise it, so a store that is down answers 503 as elsewhere.
            raise DBAPIError.instance(self._sql, params, exc, dbapi_error) from exc
        return Stamp(*row) if row is not None else None

    def _leave_autocommit(self, connection) -> None:
        """Give the connection back to the pool transactional, as every other user expects it; one
        that cannot be switched back (its server went away) is discarded instead."""
        try:
            connection.driver_connection.autocommit = False
        except self._dbapi_error:
            connection.invalidate()


def job_page(
    sessions: sessionmaker[Session],
    *,
    filt: JobFilter,
    after: tuple[datetime, str] | None,
    limit: int,
    omit: frozenset[str],
) -> Iterator[Row]:
    """Jobs matching ``filt`` newest first, after ``after`` (the ``(created_at, id)`` of the last
    one seen), at most ``limit``; the columns named in ``omit`` are never read. Rows are read a
    few at a time, so a caller that stops early (and closes this generator) holds no more."""
    # Never the checkpoint: no page shows it.
    columns = [c for c in Job.__table__.c if c.name not in omit and c.name != "checkpoint"]
    with sessions() as session:
        # A q gets one probe of its index first: how it is best read depends on how common it is.
        probe = q_probe(session, filt.q) if filt.q is not None else QProbe()
        dialect = session.get_bind().dialect.name
        query = search(
            columns, filt, dialect=dialect, after=after, limit=limit, common_q=probe.common, q_tasks=probe.tasks
        )
        rows = session.execute(query, execution_options={"yield_per": LIST_FETCH})
        with contextlib.closing(rows):
            yield from rows
