"""Worker reports applied in batches (``POST /internal/reports``).

A worker's reporter sends what it has gathered (starts, progress and ends of attempts) in one
request; this module applies the batch in one transaction with a few Core statements: one read
of the jobs, one compare-and-set UPDATE per job (a start and an end of the same attempt become
one write), then the attempt rows and the status counters in bulk. The state machine is the
same as ``JobManager``'s: within an attempt only forward, reports for other attempts refused.

Reports that need the manager's full logic are handed to it one by one after the batch
commits, in the order they came: a failure (it may start a retry), an end that releases
dependants or owes a webhook, and a job that changed between our read and our write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import DBAPIError

from backend.core.errors import JobServiceError
from backend.core.instruments import JOB_RUN_SECONDS, QUEUE_WAIT_SECONDS
from backend.core.states import TERMINAL, JobStatus
from backend.store import counts
from backend.store.engine import dialect_insert, transaction
from backend.store.models import Attempt, Job, utcnow

log = logging.getLogger("backend.service.job_manager")

EVENTS = ("started", "progress", "completed", "failed")
MAX_BATCH = 1000
#: How far back a report's own time may place an event (older ages are clamped).
MAX_AGE_SECONDS = 3600.0

_PENDING, _QUEUED, _PROCESSING = JobStatus.PENDING.value, JobStatus.QUEUED.value, JobStatus.PROCESSING.value
_COMPLETED = JobStatus.COMPLETED.value
_TERMINAL = frozenset(status.value for status in TERMINAL)

# Core statements on the tables, run on the session's connection: no ORM machinery per report.
_JOBS, _ATTEMPTS = Job.__table__, Attempt.__table__
_READ = select(
    _JOBS.c.id, _JOBS.c.status, _JOBS.c.attempt, _JOBS.c.task, _JOBS.c.created_at, _JOBS.c.started_at,
    _JOBS.c.webhook_url, _JOBS.c.has_dependants,
).where(_JOBS.c.id.in_(bindparam("ids", expanding=True)))  # fmt: skip


@dataclass(frozen=True)
class Report:
    """One worker report. ``age``: seconds from the event to the sending, by the worker's clock."""

    job_id: str
    attempt: int
    event: str
    age: float = 0.0
    worker: str | None = None
    result: object = None
    error: str | None = None
    progress: int | None = None
    message: str | None = None


@dataclass
class _Plan:
    """What one job's reports do to it, worked out from the row read at the batch's start."""

    job_id: str
    old_status: str
    attempt: int
    task: str
    created_at: datetime
    values: dict = field(default_factory=dict)
    answers: list = field(default_factory=list)
    start: tuple[str | None, datetime] | None = None
    end: datetime | None = None
    started_at: datetime | None = None


def apply(manager, reports: list[Report]) -> list[dict]:
    """Apply ``reports`` in order; one answer each: ``{"status": 200|404|409|500, "error"?: ...}``."""
    now = utcnow()
    by_job: dict[str, list[int]] = {}
    for index, report in enumerate(reports):
        by_job.setdefault(report.job_id, []).append(index)
    answers: list[dict | None] = [None] * len(reports)
    slow: list[str] = []
    done: list[_Plan] = []
    with transaction(manager.sessions) as session:
        connection = session.connection()
        rows = {row.id: row for row in connection.execute(_READ, {"ids": list(by_job)})}
        for job_id, indices in by_job.items():
            row = rows.get(job_id)
            if row is None:
                for index in indices:
                    answers[index] = {"status": 404, "error": f"no job {job_id!r}"}
                continue
            plan = _plan(row, [reports[index] for index in indices], now)
            if plan is None or (plan.values and not _write(connection, plan)):
                slow.append(job_id)
                continue
            for index, answer in zip(indices, plan.answers, strict=True):
                answers[index] = answer
            if plan.values:
                done.append(plan)
        _record_attempts(connection, done)
        _count(session, done)
    _observe(done)
    for job_id in slow:
        for index in by_job[job_id]:
            answers[index] = _answer_one(manager, reports[index], now)
    return answers  # type: ignore[return-value]


def _plan(row, reports: list[Report], now: datetime) -> _Plan | None:
    """The single write that ``reports`` make to one job, or None when the manager must decide."""
    plan = _Plan(row.id, row.status, row.attempt, row.task, row.created_at, started_at=row.started_at)
    status = row.status
    for report in reports:
        if report.event == "failed":
            return None
        if report.attempt != row.attempt:
            plan.answers.append(_refused(f"attempt {report.attempt} is not the job's current attempt {row.attempt}"))
            continue
        at = _event_time(report, now)
        if report.event == "started":
            if status in (_PENDING, _QUEUED):
                status = _PROCESSING
                plan.started_at = at
                plan.start = (report.worker, at)
                plan.values.update(status=status, started_at=at, worker=report.worker)
            elif status != _PROCESSING:
                plan.answers.append(_refused(f"cannot move from {status} to PROCESSING"))
                continue
        elif report.event == "progress":
            if status in _TERMINAL:
                plan.answers.append(_refused(f"job has ended ({status})"))
                continue
            plan.values.update(progress=report.progress, progress_message=report.message)
        elif status not in _TERMINAL:  # completed
            if row.webhook_url or row.has_dependants:
                return None
            status = _COMPLETED
            at = max(at, plan.started_at) if plan.started_at is not None else at
            plan.end = at
            plan.values.update(
                status=status, completed_at=at, result=report.result, progress=100, error=None, idempotency_key=None
            )
        elif status != _COMPLETED:
            plan.answers.append(_refused(f"cannot move from {status} to COMPLETED"))
            continue
        plan.answers.append({"status": 200})
    return plan


_UPDATES: dict[tuple[str, ...], object] = {}


def _write(connection, plan: _Plan) -> bool:
    """Compare-and-set the job's row; False when someone else changed it since our read."""
    plan.values["updated_at"] = utcnow()
    shape = tuple(sorted(plan.values))
    statement = _UPDATES.get(shape)
    if statement is None:
        # One prebuilt statement per set of columns: building one costs more than running it.
        c = _JOBS.c
        statement = (
            update(_JOBS)
            .where(c.id == bindparam("_id"), c.status == bindparam("_status"), c.attempt == bindparam("_attempt"))
            .values({name: bindparam(name) for name in shape})
        )
        _UPDATES[shape] = statement
    params = dict(plan.values, _id=plan.job_id, _status=plan.old_status, _attempt=plan.attempt)
    return connection.execute(statement, params).rowcount == 1


_ATTEMPT_STATEMENTS: dict[str, tuple[object, object]] = {}


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


def _record_attempts(connection, plans: list[_Plan]) -> None:
    opened, ended = [], []
    for plan in plans:
        worker, started_at = plan.start if plan.start is not None else (None, None)
        row = {"job_id": plan.job_id, "attempt": plan.attempt, "worker": worker, "started_at": started_at}
        if plan.end is not None:
            ended.append(dict(row, ended_at=plan.end, outcome=_COMPLETED, error=None))
        elif plan.start is not None:
            opened.append(dict(row, ended_at=None, outcome=None, error=None))
    open_statement, end_statement = _attempt_statements(connection.dialect.name)
    if opened:
        connection.execute(open_statement, opened)
    if ended:
        connection.execute(end_statement, ended)


def _count(session, plans: list[_Plan]) -> None:
    moves: dict[tuple[str, str, str], int] = {}
    for plan in plans:
        new = plan.values.get("status", plan.old_status)
        if new != plan.old_status:
            key = (plan.task, plan.old_status, new)
            moves[key] = moves.get(key, 0) + 1
    for (task, old, new), by in moves.items():
        counts.bump(session, task, old=old, new=new, by=by)


def _observe_wait(task: str, created_at: datetime, started_at: datetime) -> None:
    """A first attempt's time in the queue (never below zero: starts come from workers' clocks)."""
    QUEUE_WAIT_SECONDS.labels(task).observe(max((started_at - created_at).total_seconds(), 0.0))


def _observe_run(task: str, status: str, started_at: datetime, ended_at: datetime) -> None:
    JOB_RUN_SECONDS.labels(task, status).observe((ended_at - started_at).total_seconds())


def _observe(plans: list[_Plan]) -> None:
    for plan in plans:
        if plan.start is not None and plan.attempt == 1:
            _observe_wait(plan.task, plan.created_at, plan.start[1])
        if plan.end is not None and plan.started_at is not None:
            _observe_run(plan.task, _COMPLETED, plan.started_at, plan.end)
        if log.isEnabledFor(logging.INFO):
            status = plan.values.get("status", plan.old_status)
            log.info(
                "job %s attempt %s %s", plan.job_id, plan.attempt, status,
                extra={"job_id": plan.job_id, "attempt": plan.attempt, "task": plan.task, "status": status},
            )  # fmt: skip


def apply_one(manager, report: Report, *, now: datetime | None = None) -> Job:
    """One report through the job manager, in its own transaction; the job as it is after.

    Raises:
        JobServiceError: the report is refused (404 no such job, 409 stale or backwards).
    """
    at = _event_time(report, now or utcnow())
    if report.event == "started":
        job = manager.mark_started(report.job_id, attempt=report.attempt, worker=report.worker or "unknown", at=at)
        if job.attempt == 1 and job.started_at is not None:
            _observe_wait(job.task, job.created_at, job.started_at)
        return job
    if report.event == "progress":
        return manager.update_job_progress(
            report.job_id, attempt=report.attempt, progress=report.progress, message=report.message
        )
    if report.event == "completed":
        job = manager.mark_completed(report.job_id, attempt=report.attempt, result=report.result, at=at)
    else:
        error = report.error or "the task failed"
        job = manager.mark_failed(report.job_id, attempt=report.attempt, error=error, at=at)
    if job.started_at is not None and job.completed_at is not None:
        _observe_run(job.task, job.status, job.started_at, job.completed_at)
    return job


def _answer_one(manager, report: Report, now: datetime) -> dict:
    try:
        apply_one(manager, report, now=now)
    except JobServiceError as exc:
        if exc.status >= 500:
            raise
        return {"status": exc.status, "error": exc.message}
    except DBAPIError:
        raise  # the store is down or busy: the whole batch is answered 503 and sent again
    except Exception:
        # One report that cannot be applied must not hold back the others forever.
        log.exception("job %s: the %s report could not be applied", report.job_id, report.event)
        return {"status": 500, "error": "internal error; the incident was logged"}
    return {"status": 200}


def _event_time(report: Report, now: datetime) -> datetime:
    """When the event happened: ``now`` less the report's age (clock offsets cancel out)."""
    return now - timedelta(seconds=min(max(report.age, 0.0), MAX_AGE_SECONDS))


def _refused(reason: str) -> dict:
    return {"status": 409, "error": reason}
