"""A new job's INSERT on the submission path: prebuilt statements on the DB-API connection, no ORM
session, concurrent submissions of a process committed together (``group_commit``).

Why: a submission is the hottest write, and through the ORM it cost a session, a unit of work and
a flush; on PostgreSQL also a ``SELECT statement_timestamp()`` before the INSERT and a BEGIN and a
COMMIT around it (six round trips with the pool's ping). Here, for a job with no dependencies:

- SQLite: the jobs' INSERTs, their count deltas (one per task and status) and their kwargs' index
  rows, one executemany each, in one transaction (its writer's turn spans just that).
- PostgreSQL: each job is ONE statement (data-modifying CTEs, executed whole or not at all): its
  count delta and kwargs' rows in the same statement, ``created_at`` the server's
  ``statement_timestamp()`` returned by the INSERT. A job alone is sent in autocommit (one round
  trip and the pool's ping); several are pipelined in one transaction (BEGIN, the statements,
  COMMIT: one WAL flush, one ping).

The statements are compiled once per shape and their values put through the columns' own bind
processors, so a row holds what the ORM's flush wrote: every column the job names and each scalar
default of the model for the others, set on the job too, so a caller reads them as before. A
driver error is raised as SQLAlchemy raises it (``ConstraintViolated``, ``StoreUnavailable``...).
A job with dependencies takes ``JobRows.add_job`` (its edges and parents' marks are locked writes).
"""

from __future__ import annotations

import os
import threading
import weakref

from sqlalchemy import bindparam, event, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from backend.core.job_filters import indexed_kwargs
from backend.store.group_commit import GroupCommit, Pending
from backend.store.models import Job, JobCountDelta, JobKwarg

_JOBS, _DELTAS, _KWARGS = Job.__table__, JobCountDelta.__table__, JobKwarg.__table__
#: The model's Python-side defaults (attempt 1, progress 0, ...), as the ORM's flush applies them.
_DEFAULTS = {c.key: c.default.arg for c in _JOBS.c if c.default is not None and c.default.is_scalar}
_COLUMNS = frozenset(c.key for c in _JOBS.c)
_DELTA_KEYS = ("task", "old_status", "new_status", "jobs")
_KWARGS_KEYS = ("job_id", "owner", "name", "value", "created_at")
#: What PostgreSQL stores as "now" (naive UTC, as the columns hold it): ``clock.now_for_write``.
_PG_NOW = "timezone('UTC', statement_timestamp())"


class NewJob:
    """A new job as ``insert_new_job`` records it: the ``Job`` the ORM would build before any
    session saw it, as plain attributes. Each column reads as the value it was given, else the
    model's Python-side default, else None (as a transient ``Job`` reads). Why: the ORM's
    instrumented constructor and attribute reads were ~9% of a submission's calls (issue 17), and
    nothing on the submission's path needs a session's object.
    """

    __slots__ = (*sorted(_COLUMNS), "_named")

    def __init__(self, **values):
        unknown = values.keys() - _COLUMNS
        if unknown:
            raise TypeError(f"jobs has no columns {sorted(unknown)}")
        named = {**_DEFAULTS, **values}
        for key in _COLUMNS:
            setattr(self, key, named.get(key))
        # The columns the INSERT names (the others take the table's own defaults, as a flush does).
        self._named = tuple(named)

    def __repr__(self) -> str:
        return f"NewJob(id={self.id!r}, task={self.task!r}, status={self.status!r})"


def row_values(job: NewJob) -> dict:
    """The new row's values: each column the job was given, and the model's defaults."""
    return {key: getattr(job, key) for key in job._named}


def insert_new_job(sessions: sessionmaker[Session], job: NewJob) -> None:
    """Record ``job`` (no dependencies), its count and its kwargs' index rows: committed on return.

    Raises:
        ConstraintViolated: its owner's idempotency key is held by a live job (nothing written).
        StoreUnavailable: the store is down or busy (nothing written).
    """
    writer = _writer_of(sessions.kw["bind"])
    writer.commit(writer.prepare(job, row_values(job), indexed_kwargs(job.kwargs)))


_WRITERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def _writer_of(engine: Engine) -> _JobWriter:
    with _WRITERS_LOCK:
        writer = _WRITERS.get(engine)
        if writer is None:
            kind = PostgresJobWriter if engine.dialect.name == "postgresql" else SQLiteJobWriter
            writer = _WRITERS[engine] = kind(engine)
            if isinstance(writer, SQLiteJobWriter):
                # The held connection goes with the engine's pool (dispose: close it, not keep it).
                event.listen(engine, "engine_disposed", writer.let_go)
        return writer


#: A child process's count of forks: a connection the parent held is never used in the child.
_FORKS = [0]
os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))
#: Connections held by a parent process, kept (unused, unclosed) by its forked children.
_INHERITED: list = []


def _processed(values, processors) -> tuple:
    # A list comprehension, not a generator: ~28 values a job, each a generator step otherwise.
    return tuple([v if process is None else process(v) for v, process in zip(values, processors, strict=True)])


class _JobWriter(GroupCommit):
    """New jobs' rows for one engine: ``prepare`` turns a job into its statement's values."""

    def __init__(self, engine: Engine):
        super().__init__()
        # Weak: _WRITERS is keyed by the engine, which a strong reference here would keep for ever.
        self._engine = weakref.ref(engine)
        self.dialect = engine.dialect
        self._dbapi_error = engine.dialect.loaded_dbapi.Error
        self._shapes: dict[tuple, tuple] = {}

    @property
    def engine(self) -> Engine:
        return self._engine()

    def _processor(self, column):
        return column.type.dialect_impl(self.dialect).bind_processor(self.dialect)

    def _shape(self, shape: tuple) -> tuple:
        compiled = self._shapes.get(shape)
        if compiled is None:  # a race compiles it twice, alike
            compiled = self._shapes[shape] = self.compile(shape)
        return compiled

    def compile(self, shape: tuple) -> tuple:
        raise NotImplementedError

    def prepare(self, job: NewJob, values: dict, pairs: list[tuple[str, str]]) -> Pending:
        raise NotImplementedError

    def _raised(self, exc: BaseException, statement: str, params) -> DBAPIError:
        # As SQLAlchemy would raise it: ConstraintViolated, ValueRefused, StoreUnavailable (503)...
        return DBAPIError.instance(statement, params, exc, self._dbapi_error)


class SQLiteJobWriter(_JobWriter):
    """SQLite: a batch is one transaction of three executemany (jobs, deltas, kwargs' rows), on a
    connection the writer holds from one batch to the next (the leader's lock serialises its use).

    Why held: a connection's page cache is dropped whenever another connection wrote since its
    last transaction, and the pool hands its connections out in turn, so each batch read again
    the ~20-30 pages its INSERTs walk (a pread each: 30 a submission in process, ~2 held); the
    pool's checkout and return cost a submission ~5% of its calls. SQLite's pool is SQLAlchemy's
    default (5 + 10), which one held connection does not starve."""

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self._held: tuple[int, object] | None = None  # (_FORKS when checked out, the connection)
        self._delta_sql, self._delta_order, _ = self._insert(_DELTAS, _DELTA_KEYS)
        self._kwargs_sql, self._kwargs_order, self._kwargs_processors = self._insert(_KWARGS, _KWARGS_KEYS)

    def _insert(self, table, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...], list]:
        """The INSERT naming ``keys``: its SQL, the order it takes them in and their processors."""
        compiled = insert(table).compile(dialect=self.dialect, column_keys=list(keys))
        order = tuple(compiled.positiontup)
        if set(order) != set(keys):
            raise RuntimeError(f"{table.name}: SQLite's INSERT names {order}, not {keys}")
        return str(compiled), order, [self._processor(table.c[key]) for key in order]

    def compile(self, shape: tuple) -> tuple:
        return self._insert(_JOBS, shape)

    def _connection(self):
        if not isinstance(self.engine.pool, QueuePool):  # ":memory:": a connection per thread
            return self.engine.raw_connection()
        if self._held is not None:
            forks, connection = self._held
            if forks != _FORKS[0]:
                _INHERITED.append(connection)  # the parent's: never used nor closed here
            elif connection._pool is self.engine.pool:
                return connection
            else:  # the engine was disposed since: its old pool's connection goes
                _quietly(connection.invalidate, BaseException)
        self._held = None
        connection = self.engine.raw_connection()
        self._held = (_FORKS[0], connection)
        return connection

    def let_go(self, _engine=None) -> None:
        """Close the held connection (the engine was disposed); the next batch opens another."""
        with self._leader:  # not while a batch is on it
            held, self._held = self._held, None
        if held is not None and held[0] == _FORKS[0]:
            _quietly(held[1].invalidate, BaseException)

    def prepare(self, job: NewJob, values: dict, pairs: list[tuple[str, str]]) -> Pending:
        shape = tuple(sorted(values))
        _sql, order, processors = self._shape(shape)
        kwargs_rows = []
        for name, value in pairs:
            row = {"job_id": job.id, "owner": job.owner, "name": name, "value": value, "created_at": job.created_at}
            kwargs_rows.append(_processed([row[k] for k in self._kwargs_order], self._kwargs_processors))
        params = _processed([values[k] for k in order], processors)
        return Pending(shape, params, job.task, job.status, kwargs_rows)

    def write(self, batch: list[Pending]) -> None:
        moves: dict[tuple[str, str], int] = {}
        by_shape: dict[tuple, list[tuple]] = {}
        for pending in batch:
            moves[pending.task, pending.status] = moves.get((pending.task, pending.status), 0) + 1
            by_shape.setdefault(pending.shape, []).append(pending.params)
        deltas = [{"task": t, "old_status": None, "new_status": s, "jobs": n} for (t, s), n in moves.items()]
        steps = [(self._shape(shape)[0], rows) for shape, rows in by_shape.items()]
        steps.append((self._delta_sql, [tuple(d[k] for k in self._delta_order) for d in deltas]))
        kwargs_rows = [row for pending in batch for row in pending.kwargs_rows]
        if kwargs_rows:
            steps.append((self._kwargs_sql, kwargs_rows))
        statement, params = "", None
        try:
            connection = self._connection()
            try:
                cursor = connection.cursor()
                for statement, params in steps:
                    cursor.executemany(statement, params)
                cursor.close()
                connection.commit()
            except BaseException:
                if not _quietly(connection.rollback, BaseException):
                    # Left in a state unknown: given up (the pool opens another next time).
                    self._held = None
                    _quietly(connection.invalidate, BaseException)
                raise
            finally:
                if self._held is None or self._held[1] is not connection:
                    connection.close()  # not held: back to its pool
        except self._dbapi_error as exc:
            raise self._raised(exc, statement, params) from exc


class PostgresJobWriter(_JobWriter):
    """PostgreSQL: one statement per job (CTEs); one alone in autocommit, several pipelined in one
    transaction."""

    def compile(self, shape: tuple) -> tuple:
        """``WITH new_delta AS (INSERT ...), new_kwargs AS (INSERT ...) INSERT INTO jobs ...
        RETURNING created_at`` for ``shape`` = (the columns named, the number of kwargs rows): its
        SQL and each typed parameter's processor. Text with typed parameters: SQLAlchemy's Core
        would make the delta's id a client-side parameter inside a CTE; the names are the model's."""
        keys, kwargs_rows = shape
        kwargs_cte = ""
        if kwargs_rows:
            rows = ", ".join(f"(:id, :owner, :kw_name_{i}, :kw_value_{i}, {_PG_NOW})" for i in range(kwargs_rows))
            kwargs_cte = (
                f", new_kwargs AS (INSERT INTO job_kwargs (job_id, owner, name, value, created_at) VALUES {rows})"
            )
        sql = (
            "WITH new_delta AS (INSERT INTO job_count_deltas (task, old_status, new_status, jobs)"
            f" VALUES (:delta_task, NULL, :delta_status, 1)){kwargs_cte}"
            f" INSERT INTO jobs ({', '.join(keys)}, created_at, updated_at)"
            f" VALUES ({', '.join(':' + key for key in keys)}, {_PG_NOW}, {_PG_NOW}) RETURNING created_at"
        )
        typed = text(sql).bindparams(*(bindparam(key, type_=_JOBS.c[key].type) for key in keys))
        processors = {key: self._processor(_JOBS.c[key]) for key in keys}
        return str(typed.compile(dialect=self.dialect)), processors

    def prepare(self, job: NewJob, values: dict, pairs: list[tuple[str, str]]) -> Pending:
        # The database's time, not the submitting host's: the reconciler, maybe on another host,
        # compares updated_at with the database's clock.
        values = {k: v for k, v in values.items() if k not in ("created_at", "updated_at")}
        shape = (tuple(sorted(values)), len(pairs))
        _sql, processors = self._shape(shape)
        params = {k: (v if processors[k] is None else processors[k](v)) for k, v in values.items()}
        params["delta_task"], params["delta_status"] = job.task, job.status
        for i, (name, value) in enumerate(pairs):
            params[f"kw_name_{i}"], params[f"kw_value_{i}"] = name, value
        return Pending(shape, params, job.task, job.status, [], job=job)

    def write(self, batch: list[Pending]) -> None:
        alone = len(batch) == 1  # one statement: atomic by itself, no BEGIN/COMMIT round trips
        statement, params = "", None
        try:
            connection = self.engine.raw_connection()
            driver = connection.driver_connection
            try:
                driver.autocommit = alone
                cursor = driver.cursor()
                by_shape: dict[tuple, list[Pending]] = {}
                for pending in batch:
                    by_shape.setdefault(pending.shape, []).append(pending)
                created = []
                for shape, group in by_shape.items():
                    statement = self._shape(shape)[0]
                    if len(group) == 1:
                        params = group[0].params
                        cursor.execute(statement, params)
                        created.append((group[0].job, cursor.fetchone()[0]))
                        continue
                    params = [p.params for p in group]
                    # Pipelined by psycopg: one round trip for the group (its BEGIN included).
                    cursor.executemany(statement, params, returning=True)
                    for pending in group:
                        created.append((pending.job, cursor.fetchone()[0]))
                        cursor.nextset()
                cursor.close()
                if not alone:
                    statement, params = "COMMIT", None
                    driver.commit()
            except BaseException:
                _quietly(driver.rollback, self._dbapi_error)
                raise
            finally:
                # Back to the pool transactional, as every other user expects it; else discarded.
                if alone and not _quietly(lambda: setattr(driver, "autocommit", False), self._dbapi_error):
                    connection.invalidate()
                connection.close()
        except self._dbapi_error as exc:
            raise self._raised(exc, statement, params) from exc
        convert = _JOBS.c.created_at.type.dialect_impl(self.dialect).result_processor(self.dialect, None)
        for job, at in created:
            job.created_at = job.updated_at = at if convert is None else convert(at)


def _quietly(call, errors) -> bool:
    """``call()``; False when it raised one of ``errors`` (a connection already broken)."""
    try:
        call()
    except errors:
        return False
    return True
