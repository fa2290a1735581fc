"""The statements of the worker-report batch path (``backend.service.worker_reports``).

A batch is applied in one transaction with a few Core statements, on a connection of the
sessions' engine: no ORM machinery per report, nor an ORM session per batch (its set-up, state
changes and commit cost ~140 µs a transaction). One read of the jobs, one compare-and-set
UPDATE per job (``WHERE status = :seen AND attempt = :seen``: a writer racing us makes it match
nothing), written in job-id order (the store's one lock order), a run of jobs with the same
columns written in one executemany, then the attempt rows and the count deltas in bulk (one
statement each, however many jobs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Row, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.store import clock, counts
from backend.store.engine import dialect_insert
from backend.store.models import Attempt, Job

_JOBS, _ATTEMPTS = Job.__table__, Attempt.__table__
#: What the planner needs of a job, and no more (the result and args can be large).
_READ = select(
    _JOBS.c.id, _JOBS.c.status, _JOBS.c.attempt, _JOBS.c.task, _JOBS.c.created_at, _JOBS.c.started_at,
    _JOBS.c.webhook_url, _JOBS.c.has_dependants,
).where(_JOBS.c.id.in_(bindparam("ids", expanding=True)))  # fmt: skip

# One prebuilt statement per set of columns written, and per dialect for the attempt upserts:
# building a statement costs more than running it.
_UPDATES: dict[tuple[str, tuple[str, ...]], object] = {}
_ATTEMPT_STATEMENTS: dict[str, tuple[object, object]] = {}


class ReportWrites:
    """One batch's statements, on one connection (one transaction)."""

    def __init__(self, connection: Connection):
        self._connection = connection

    def read(self, job_ids: list[str]) -> dict[str, Row]:
        """The rows of the jobs named (those that exist), by id."""
        return {row.id: row for row in self._connection.execute(_READ, {"ids": job_ids})}

    def write(self, job_id: str, *, seen_status: str, seen_attempt: int, values: dict) -> bool:
        """Compare-and-set one job's row; False when someone else changed it since our read.

        ``updated_at`` is written too: the database's time (``clock.now_for_write``).
        """
        return self.write_many([(job_id, seen_status, seen_attempt, values)])

    def write_many(self, writes: list[tuple[str, str, int, dict]]) -> bool:
        """Compare-and-set the rows of ``writes`` (job id, seen status, seen attempt, values; the
        same columns in each), in order, in one ``executemany``: one round trip on PostgreSQL
        (psycopg pipelines it), one prepared statement on SQLite. False when any row matched
        nothing: which one is unknown, so the caller rolls the transaction back and writes one by one.
        """
        dialect = self._connection.dialect.name
        statement = _update(dialect, tuple(sorted(writes[0][3])))
        now = None if dialect == "postgresql" else clock.now_for_write(dialect)
        params = []
        for job_id, seen_status, seen_attempt, values in writes:
            row = dict(values, _id=job_id, _status=seen_status, _attempt=seen_attempt)
            if now is not None:
                row["_now"] = now
            params.append(row)
        # One parameter set is a plain execute; several, an executemany whose rowcount is the sum.
        return self._connection.execute(statement, params[0] if len(params) == 1 else params).rowcount == len(params)

    def record_attempts(self, opened: list[dict], ended: list[dict]) -> None:
        """Insert the attempt rows of starts (kept if present) and upsert those of ends.

        Each row: ``job_id, attempt, worker, started_at, ended_at, outcome, error``.
        """
        open_statement, end_statement = _attempt_statements(self._connection.dialect.name)
        if opened:
            self._connection.execute(open_statement, opened)
        if ended:
            self._connection.execute(end_statement, ended)

    def count_moves(self, moves: dict[tuple[str, str, str], int]) -> None:
        """Move the maintained counts: ``{(task, old, new): jobs}``, in one statement."""
        counts.record_moves_on(self._connection, moves)


@contextmanager
def report_writes(sessions: sessionmaker[Session]) -> Iterator[ReportWrites]:
    """A batch's statements in one transaction: committed when the block ends, else rolled back.

    On a connection of the sessions' engine (``Connection.begin``: the same pool, BEGIN and COMMIT
    as a session's transaction).
    """
    with sessions.kw["bind"].begin() as connection:
        yield ReportWrites(connection)


def _update(dialect: str, shape: tuple[str, ...]):
    """The prebuilt compare-and-set UPDATE of the columns ``shape`` (and ``updated_at``)."""
    statement = _UPDATES.get((dialect, shape))
    if statement is None:
        c = _JOBS.c
        now = clock.now_for_write(dialect)
        statement = (
            update(_JOBS)
            .where(c.id == bindparam("_id"), c.status == bindparam("_status"), c.attempt == bindparam("_attempt"))
            .values({name: bindparam(name) for name in shape})
            # PostgreSQL evaluates its clock in the statement; SQLite gets this host's time.
            .values(updated_at=now if dialect == "postgresql" else bindparam("_now"))
        )
        _UPDATES[(dialect, shape)] = statement
    return statement


def _attempt_statements(dialect: str):
    if dialect not in _ATTEMPT_STATEMENTS:
        insert = dialect_insert(dialect)
        key = [_ATTEMPTS.c.job_id, _ATTEMPTS.c.attempt]
        opened = insert(_ATTEMPTS).on_conflict_do_nothing(index_elements=key)
        ended = insert(_ATTEMPTS)
        ended = ended.on_conflict_do_update(
            index_elements=key,
            set_={"ended_at": ended.excluded.ended_at, "outcome": ended.excluded.outcome, "error": None},
        )
        _ATTEMPT_STATEMENTS[dialect] = (opened, ended)
    return _ATTEMPT_STATEMENTS[dialect]
