"""A new job's INSERT on the submission path: prebuilt Core statements, no ORM session.

Why: a submission is the hottest write, and through the ORM it cost a session, a unit of work and
a flush; on PostgreSQL also a ``SELECT statement_timestamp()`` before the INSERT and a BEGIN and a
COMMIT around it (six round trips with the pool's ping). Here, for a job with no dependencies:

- SQLite runs the job's INSERT, its count delta and its kwargs' index rows in one transaction on a
  pooled connection (its writer's turn, ``sqlite_writers``, spans just that).
- PostgreSQL runs them as ONE statement (data-modifying CTEs, executed whole or not at all) in
  autocommit: one round trip and the pool's ping. ``created_at`` is the server's
  ``statement_timestamp()``, the same in every part of the statement, returned by the INSERT.

A job with dependencies takes ``JobRows.add_job`` (its edges and parents' marks are locked writes).
What the row says is what the ORM's flush wrote: every column the job names, and each scalar
default of the model for the others, set on the job too, so a caller reads them as before.
"""

from __future__ import annotations

import threading
import weakref
from functools import lru_cache

from sqlalchemy import bindparam, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from backend.core.job_filters import indexed_kwargs
from backend.store.models import Job, JobCountDelta, JobKwarg

_JOBS, _DELTAS, _KWARGS = Job.__table__, JobCountDelta.__table__, JobKwarg.__table__
#: The model's Python-side defaults (attempt 1, progress 0, ...), as the ORM's flush applies them.
_DEFAULTS = {c.key: c.default.arg for c in _JOBS.c if c.default is not None and c.default.is_scalar}
_COLUMNS = frozenset(c.key for c in _JOBS.c)
#: What PostgreSQL stores as "now" (naive UTC, as the columns hold it): ``clock.now_for_write``.
_PG_NOW = "timezone('UTC', statement_timestamp())"


def row_values(job: Job) -> dict:
    """The new row's values: the job's own, then each model default it lacks (set on it too)."""
    state = vars(job)
    values = {key: state[key] for key in _COLUMNS.intersection(state)}
    for key, default in _DEFAULTS.items():
        if key not in values:
            setattr(job, key, default)
            values[key] = default
    return values


def insert_new_job(sessions: sessionmaker[Session], job: Job) -> None:
    """Record ``job`` (no dependencies), its count and its kwargs' index rows: committed on return.

    Raises:
        ConstraintViolated: its owner's idempotency key is held by a live job (nothing written).
        StoreUnavailable: the store is down or busy (nothing written).
    """
    engine = sessions.kw["bind"]
    values = row_values(job)
    pairs = indexed_kwargs(job.kwargs)
    if engine.dialect.name == "postgresql":
        _insert_postgresql(engine, job, values, pairs)
    else:
        _group_of(engine).insert(job, values, pairs)


_DELTA_KEYS = ("task", "old_status", "new_status", "jobs")
_KWARGS_KEYS = ("job_id", "owner", "name", "value", "created_at")


def _processed(values: list, processors: list) -> tuple:
    return tuple(v if process is None else process(v) for v, process in zip(values, processors, strict=True))


_GROUPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GROUPS_LOCK = threading.Lock()


def _group_of(engine: Engine) -> SQLiteGroupCommit:
    with _GROUPS_LOCK:
        group = _GROUPS.get(engine)
        if group is None:
            group = _GROUPS[engine] = SQLiteGroupCommit(engine)
        return group


class _Pending:
    """One job waiting to be written by whichever thread leads the next commit."""

    __slots__ = ("keys", "params", "task", "status", "kwargs_rows", "done", "error")

    def __init__(self, keys: tuple[str, ...], params: tuple, task: str, status: str, kwargs_rows: list[tuple]):
        self.keys, self.params, self.task, self.status, self.kwargs_rows = keys, params, task, status, kwargs_rows
        self.done = False
        self.error: BaseException | None = None


class SQLiteGroupCommit:
    """New jobs of one process written to SQLite in shared transactions (group commit).

    Why: SQLite writes one transaction at a time (``sqlite_writers``: a turn on a file lock), so
    concurrent submissions queued for the turn and each paid a whole transaction: under 8 clients
    about 30% of a submission's time was the wait for the turn (py-spy, issue 17). Here a thread
    queues its job, then takes the leader's lock; the holder writes every job queued by then in one
    transaction (an executemany per table, one count delta per task and status), so the threads
    that queued meanwhile find theirs committed when their turn comes. The statements are compiled
    once and run on the DB-API connection, their values put through the columns' own bind
    processors: the row is what SQLAlchemy writes. A batch that a row's fault refuses (a unique
    key taken, a value the store refuses) is written again job by job, so that only that job fails.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect
        self._dbapi_error = engine.dialect.loaded_dbapi.Error
        self._leader = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._job_sql: dict[tuple[str, ...], tuple[str, tuple[str, ...], list]] = {}
        self._delta_sql, self._delta_order, _ = self._compile(_DELTAS, _DELTA_KEYS)
        self._kwargs_sql, self._kwargs_order, self._kwargs_processors = self._compile(_KWARGS, _KWARGS_KEYS)

    def _compile(self, table, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...], list]:
        """The INSERT naming ``keys``: its SQL, the order it takes them in and their processors."""
        compiled = insert(table).compile(dialect=self.dialect, column_keys=list(keys))
        order = tuple(compiled.positiontup)
        if set(order) != set(keys):
            raise RuntimeError(f"{table.name}: SQLite's INSERT names {order}, not {keys}")
        processors = [table.c[key].type.dialect_impl(self.dialect).bind_processor(self.dialect) for key in order]
        return str(compiled), order, processors

    def _job_statement(self, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...], list]:
        statement = self._job_sql.get(keys)
        if statement is None:
            statement = self._job_sql[keys] = self._compile(_JOBS, keys)
        return statement

    def insert(self, job: Job, values: dict, pairs: list[tuple[str, str]]) -> None:
        """Write ``job``'s row (``values``), its count and its kwargs' rows; committed on return."""
        keys = tuple(sorted(values))
        _sql, order, processors = self._job_statement(keys)
        params = _processed([values[k] for k in order], processors)
        kwargs_rows = []
        for name, value in pairs:
            row = {"job_id": job.id, "owner": job.owner, "name": name, "value": value, "created_at": job.created_at}
            kwargs_rows.append(_processed([row[k] for k in self._kwargs_order], self._kwargs_processors))
        mine = _Pending(keys, params, job.task, job.status, kwargs_rows)
        with self._queue_lock:
            self._queue.append(mine)
        with self._leader:
            if not mine.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._write_batch(batch)
        if mine.error is not None:
            raise mine.error

    def _write_batch(self, batch: list[_Pending]) -> None:
        """Write ``batch``; each job's outcome (None, or the error to raise) is left on it."""
        try:
            self._write(batch)
        except (IntegrityError, DataError) as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for pending in batch:  # job by job: only the faulty one fails
                    self._write_batch([pending])
        except Exception as exc:  # the store down or busy: every job of the batch fails alike
            for pending in batch:
                pending.error = exc
        finally:
            for pending in batch:
                pending.done = True

    def _write(self, batch: list[_Pending]) -> None:
        """One transaction for ``batch``, committed; a driver error raised as SQLAlchemy raises it."""
        moves: dict[tuple[str, str], int] = {}
        by_keys: dict[tuple[str, ...], list[tuple]] = {}
        for pending in batch:
            moves[pending.task, pending.status] = moves.get((pending.task, pending.status), 0) + 1
            by_keys.setdefault(pending.keys, []).append(pending.params)
        statement, params = "", None
        try:
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                for keys, rows in by_keys.items():
                    statement, params = self._job_statement(keys)[0], rows
                    cursor.executemany(statement, rows)
                deltas = [{"task": t, "old_status": None, "new_status": s, "jobs": n} for (t, s), n in moves.items()]
                statement, params = self._delta_sql, [tuple(d[k] for k in self._delta_order) for d in deltas]
                cursor.executemany(statement, params)
                kwargs_rows = [row for pending in batch for row in pending.kwargs_rows]
                if kwargs_rows:
                    statement, params = self._kwargs_sql, kwargs_rows
                    cursor.executemany(statement, kwargs_rows)
                cursor.close()
                connection.commit()
            except BaseException:
                connection.rollback()
                raise
            finally:
                connection.close()
        except self._dbapi_error as exc:
            # As SQLAlchemy would raise it: ConstraintViolated, StoreUnavailable (503) and so on.
            raise DBAPIError.instance(statement, params, exc, self._dbapi_error) from exc


def _insert_postgresql(engine, job: Job, values: dict, pairs: list[tuple[str, str]]) -> None:
    # The database's time, not the submitting host's: the reconciler, maybe on another host,
    # compares updated_at with the database's clock.
    values.pop("created_at", None)
    values.pop("updated_at", None)
    params = dict(values, delta_task=job.task, delta_status=job.status)
    for i, (name, value) in enumerate(pairs):
        params[f"kw_name_{i}"], params[f"kw_value_{i}"] = name, value
    statement = _postgresql_statement(tuple(sorted(values)), len(pairs))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        created_at = connection.execute(statement, params).scalar_one()
    job.created_at = job.updated_at = created_at


@lru_cache(maxsize=64)
def _postgresql_statement(keys: tuple[str, ...], kwargs_rows: int):
    """``WITH new_delta AS (INSERT ...), new_kwargs AS (INSERT ...) INSERT INTO jobs ... RETURNING
    created_at``, built once per shape (the columns named, the number of kwargs rows). Text with
    typed parameters: SQLAlchemy's Core would make the delta's id a client-side parameter inside a
    CTE; the key names are the model's own columns."""
    kwargs_cte = ""
    if kwargs_rows:
        rows = ", ".join(f"(:id, :owner, :kw_name_{i}, :kw_value_{i}, {_PG_NOW})" for i in range(kwargs_rows))
        kwargs_cte = f", new_kwargs AS (INSERT INTO job_kwargs (job_id, owner, name, value, created_at) VALUES {rows})"
    sql = (
        "WITH new_delta AS (INSERT INTO job_count_deltas (task, old_status, new_status, jobs)"
        f" VALUES (:delta_task, NULL, :delta_status, 1)){kwargs_cte}"
        f" INSERT INTO jobs ({', '.join(keys)}, created_at, updated_at)"
        f" VALUES ({', '.join(':' + key for key in keys)}, {_PG_NOW}, {_PG_NOW}) RETURNING created_at"
    )
    typed = [bindparam(key, type_=_JOBS.c[key].type) for key in keys]
    return text(sql).bindparams(*typed).columns(created_at=_JOBS.c.created_at.type)
