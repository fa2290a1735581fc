"""The prune's statements: which ended jobs may go, and their deletion with everything keyed by them.

A job goes with its attempts, log lines, webhook deliveries (and their attempts), dependency edges
and kwargs index rows (job_kwargs): every one of those tables references jobs ON DELETE CASCADE,
so deleting the job row deletes them in the same statement, on SQLite (foreign keys are on) and
PostgreSQL alike. Checkpoints are columns of the job. Schedule firings stay: they only guard a
schedule against firing twice. The maintained counts move in the same transaction (a delta row
per task), so GET /monitoring counts exactly the rows left.

Kept, whatever their age: a job with a dependant row (live or ended: a retried dependant reads
the parent's outcome; the edge goes when the dependant is pruned, then the parent may go), and a
job of a batch that still has a live job (the batch's counts would change under
its client's eyes). The delete repeats every condition of the select, so a job retried or given a
dependant between the two is never deleted: the select runs outside the write lock, the delete
under it, on a few dozen ids by primary key (PostgreSQL: after locking them, see delete_jobs).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import bindparam, delete, func, not_, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from backend.core.states import LIVE_VALUES, TERMINAL_VALUES
from backend.store import counts
from backend.store.models import LIVE_BATCH_JOBS, Batch, Job, JobLog, UTCDateTime

_JOBS = Job.__table__
# LIVE_BATCH_JOBS and the statements below spell every live status.
assert {"PENDING", "QUEUED", "PROCESSING"} == LIVE_VALUES

# Statuses are literals, as the partial indexes' predicates spell them: SQLite uses a partial index
# only for a query whose terms match its predicate's, never for a bound parameter. SQLite is also
# told the indexes (INDEXED BY): without statistics its planner took ix_jobs_status_created and
# sorted every COMPLETED job, and walked a batch's jobs instead of probing its live ones.
# A parent stays while any dependant row does (its edge goes when that dependant is pruned): the
# dependant's retry reads the parent's outcome (cancelled again after a failure, not waiting after
# a success), and no dependant ever names a parent that is not there.
_KEPT = """
    AND (j.has_dependants = false OR NOT EXISTS (
        SELECT 1 FROM job_dependencies AS d WHERE d.depends_on_id = j.id))
    AND (j.batch_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM jobs AS s{live_index} WHERE s.batch_id = j.batch_id AND {live}))
""".replace("{live}", LIVE_BATCH_JOBS.replace("batch_id", "s.batch_id").replace("status", "s.status"))
_SELECT = "SELECT j.id FROM jobs AS j{index} WHERE j.status = '{status}' AND j.completed_at < :before" + _KEPT
_INDEX = {
    "COMPLETED": "ix_jobs_completed",
    "FAILED": "ix_jobs_status_completed",
    "CANCELLED": "ix_jobs_status_completed",
}
_BEFORE = bindparam("before", type_=UTCDateTime())


def _statement(kind: str, status: str, dialect: str):
    """The prune's SELECT of ids (``kind`` "ids"), its COUNT ("count") or its DELETE ("delete")."""
    if status not in TERMINAL_VALUES:
        raise ValueError(f"{status!r} is not an end status")
    sqlite = dialect == "sqlite"
    index = f" INDEXED BY {_INDEX[status]}" if sqlite else ""
    live_index = " INDEXED BY ix_jobs_batch_live" if sqlite else ""
    sql = _SELECT.format(index=index, status=status, live_index=live_index)
    if kind == "ids":
        # With each job's rows (its log lines, attempts and itself): a transaction is sized by rows.
        sql = sql.replace("SELECT j.id", "SELECT j.id, j.log_lines + j.attempt + 1", 1)
        return text(sql + " ORDER BY j.completed_at LIMIT :limit").bindparams(_BEFORE)
    if kind == "count":
        return text(sql.replace("SELECT j.id", "SELECT count(*)", 1)).bindparams(_BEFORE)
    # The DELETE repeats every condition on the rows named, under the write lock.
    where = sql.split(" WHERE ", 1)[1]
    if sqlite:
        # By primary key, always: on a few hundred ids SQLite's planner took the status/end-time
        # range instead (ix_jobs_completed: every COMPLETED job of 500,000 walked, 100-200 ms in
        # the write lock, against 3 ms). A unary + keeps a term from choosing an index.
        where = where.replace("j.status = ", "+j.status = ", 1).replace("j.completed_at <", "+j.completed_at <", 1)
    return text(f"DELETE FROM jobs AS j WHERE j.id IN :ids AND {where} RETURNING task, batch_id").bindparams(
        _BEFORE, bindparam("ids", expanding=True)
    )


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def prunable_ids(session: Session, status: str, before: datetime, limit: int) -> list[tuple[str, int]]:
    """Up to ``limit`` (id, rows) of ``status`` jobs ended before ``before``, oldest first, none kept.

    ``rows`` is what deleting the job deletes, about: its log lines, its attempts and itself.
    """
    statement = _statement("ids", status, _dialect(session))
    return [(job_id, int(rows or 0)) for job_id, rows in session.execute(statement, {"before": before, "limit": limit})]


def _within(found: list[tuple[str, int]], rows: int) -> list[tuple[str, int]]:
    """The first jobs of ``found`` whose rows add up to at most ``rows`` (always the first one)."""
    taken, total = [], 0
    for job_id, n in found:
        if taken and total + n > rows:
            break
        taken.append((job_id, n))
        total += n
    return taken


def count_prunable(session: Session, status: str, before: datetime) -> int:
    """How many ``status`` jobs ended before ``before`` would go (a dry run's answer)."""
    return int(session.scalar(_statement("count", status, _dialect(session)), {"before": before}))


def delete_jobs(session: Session, ids: list[str], status: str, before: datetime) -> int:
    """Delete those of ``ids`` that are still prunable, with every row keyed by them; how many went.

    The caller commits: the deletion, the count deltas and the emptied batches are one transaction.
    """
    if not ids:
        return 0
    dialect = _dialect(session)
    if dialect == "postgresql":
        # Lock the rows first, then delete in a statement of its own: under READ COMMITTED the
        # DELETE's NOT EXISTS reads a fresh snapshot only if it starts after the lock wait. A
        # submission that gives a parent a dependant holds a lock on the parent row (the edge's
        # foreign key check, has_dependants) until it commits; one DELETE waiting on that lock
        # would re-check the row alone, with the subqueries' old snapshot, and delete the parent.
        session.execute(
            text("SELECT id FROM jobs WHERE id IN :ids ORDER BY id FOR UPDATE").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": list(ids)},
        )
    statement = _statement("delete", status, dialect)
    gone = session.execute(statement, {"ids": list(ids), "before": before}).all()
    if not gone:
        return 0
    by_task = Counter(task for task, _batch in gone)
    # Leaving the status for nowhere: the counts of (task, status) drop by n.
    counts.record_moves(session, {(task, status, None): n for task, n in by_task.items()})
    batches = sorted({batch for _task, batch in gone if batch is not None})
    if batches:
        # A batch whose last job went: its row goes too (nothing lists it without its jobs).
        remaining = select(_JOBS.c.id).where(_JOBS.c.batch_id == Batch.id).exists()
        session.execute(delete(Batch).where(Batch.id.in_(batches), not_(remaining)))
    return len(gone)


def _delete_logs(session: Session, job_id: str, status: str, before: datetime, rows: int) -> int:
    """Delete up to ``rows`` log lines of a job that is still prunable; how many went.

    A job with more log lines than a transaction's budget loses them a chunk per transaction
    before the job itself goes. The job must still be prunable (not retried meanwhile).
    """
    sql = _SELECT.format(index="", status=status, live_index="") + " AND j.id = :job"
    still = session.execute(text(sql).bindparams(_BEFORE), {"before": before, "job": job_id}).first()
    if still is None:
        return 0
    logs = JobLog.__table__
    chunk = select(logs.c.id).where(logs.c.job_id == job_id).limit(rows).scalar_subquery()
    went = session.execute(delete(logs).where(logs.c.id.in_(chunk))).rowcount or 0
    left = (
        func.max(0, _JOBS.c.log_lines - went)
        if _dialect(session) == "sqlite"
        else func.greatest(0, _JOBS.c.log_lines - went)
    )
    session.execute(_JOBS.update().where(_JOBS.c.id == job_id).values(log_lines=left))
    return went


def prune_batch(engine: Engine, status: str, before: datetime, limit: int, rows: int = 10**9) -> tuple[int, bool]:
    """One transaction of a prune, on a connection of its own: (jobs deleted, whether to come back).

    The transaction deletes about ``rows`` rows at most (log lines, attempts, jobs): a job with
    full logs is a thousand rows, and SQLite's one write lock is held while they go. A job with
    more rows than that gives a transaction to a chunk of its log lines instead, and goes with
    the last chunk. Come back: this one did something and its select did not see the end.

    SQLite: the transaction's commit does not checkpoint the WAL (wal_autocheckpoint 0 while it
    runs); a passive checkpoint follows it, out of the writers' turn. A commit that checkpoints
    copies every page in the WAL to the database (several MB after a batch) while it still holds
    the writers' turn: submissions waited 50-270 ms behind such commits, against about 10 ms.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            every = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            connection.commit()
        try:
            with Session(bind=connection) as session:
                found = prunable_ids(session, status, before, limit)
                taken = _within(found, rows)
                went = 0
                if len(taken) == 1 and taken[0][1] > rows:
                    job_id, n = taken[0]
                    went = _delete_logs(session, job_id, status, before, rows)
                    # The job goes once a chunk empties its logs (next transaction, the normal way).
                    taken = taken if went < rows else []
                deleted = delete_jobs(session, [job_id for job_id, _n in taken], status, before)
                session.commit()
        finally:
            if sqlite:
                connection.rollback()
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={int(every)}")
                connection.commit()
    return deleted, bool(deleted or went) and (len(found) == limit or len(taken) < len(found))
