"""Worker reports applied in batches (``POST /internal/reports``): the planning.

A worker's reporter sends what it has gathered (starts, progress and ends of attempts) in one
request; this module applies the batch in one transaction: one read of the jobs, then for each
job the single write its reports make (a start and an end of the same attempt become one
write), planned here from the row read and written by ``backend.store.report_writes`` with a
compare-and-set, then the attempt rows and the status counters in bulk. Every move is decided
by ``backend.core.states.decide``, the job commands' state machine too: within an attempt only
forward, reports for other attempts refused.

Reports that need the manager's full logic are handed to it one by one, in the order they
came: a failure (it may start a retry) and an end that releases dependants or owes a webhook
before the batch's writes (a dependant's reports never land before its parent's end), a job
that changed between our read and our write after the batch commits. A snooze is an end the
manager decides too (a new attempt later). ``log`` reports move no job: their lines are kept by
``backend.service.job_logs`` in a transaction of their own, after the moves (a batch without
any pays one comparison per report for them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from backend.core.errors import JobServiceError
from backend.core.instruments import JOB_RUN_SECONDS, QUEUE_WAIT_SECONDS
from backend.core.protocol import COMPLETED, FAILED, LOG, PROGRESS, SNOOZED, STARTED, Report, answer
from backend.core.states import JobStatus, decide
from backend.service import job_logs
from backend.store import conflicts
from backend.store.errors import StoreError, StoreUnavailable
from backend.store.jobs import Sessions
from backend.store.models import Job, utcnow
from backend.store.report_writes import report_writes

# The job commands' logger: a report's line reads the same whichever path applied it.
log = logging.getLogger("backend.service.attempts")

_PROCESSING, _COMPLETED = JobStatus.PROCESSING.value, JobStatus.COMPLETED.value
#: The status each event asks for; a progress report moves none (it writes within the live attempt).
_TARGETS = {STARTED: _PROCESSING, PROGRESS: None, COMPLETED: _COMPLETED}
#: The ends the manager decides: a failure (it may start a retry), a snooze (a new attempt later).
_MANAGER_ENDS = frozenset({FAILED, SNOOZED})


@dataclass
class JobPlan:
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


def apply(manager, reports: list[Report], *, sessions: Sessions) -> list[dict]:
    """Apply ``reports`` in order; one answer each: ``{"status": 200|404|409|500, "error"?: ...}``.

    ``sessions`` opens the batch's transactions; ``manager`` takes the reports that need the job
    commands' full logic.
    """
    now = utcnow()
    by_job: dict[str, list[int]] = {}
    logged: list[int] = []
    for index, report in enumerate(reports):
        if report.event == LOG:
            # Lines move no status and are taken for any attempt: apart from the moves.
            logged.append(index)
        else:
            by_job.setdefault(report.job_id, []).append(index)
    answers: list[dict | None] = [None] * len(reports)
    if by_job:
        _apply_moves(manager, reports, by_job, answers, sessions, now)
    if logged:
        for index, job_answer in zip(logged, job_logs.record(sessions, [reports[i] for i in logged]), strict=True):
            answers[index] = job_answer
    return answers  # type: ignore[return-value]


class _Raced(Exception):
    """A run of rows written together met a row changed since our read: the transaction is rolled
    back (nothing of it stays) and written again one row at a time, which says which one."""


def _apply_moves(manager, reports: list[Report], by_job: dict[str, list[int]], answers: list, sessions, now) -> None:
    """The reports that move jobs (all but ``log``), in one transaction; see ``apply``."""
    # Each unit reads, plans and writes afresh when it is run again after a deadlock or a race.
    for together in (True, False):
        try:
            for run in conflicts.attempts():
                with run, report_writes(sessions) as store:
                    plans, first = _plan(store.read(list(by_job)), by_job, reports, answers, now)
                    late, done = ([], []) if first else _write(store, plans, by_job, answers, together=together)
            break
        except _Raced:
            continue
    if first:
        # The manager's reports go before the batch's writes (nothing was written yet): a
        # parent's end releases its dependants there, and a dependant's own reports, later in
        # the batch, must never be stored before it (a child COMPLETED under a PROCESSING
        # parent). The plans stay good: a row changed meanwhile fails its compare-and-set.
        _answer_manager(manager, first, by_job, reports, answers, now)
        for together in (True, False):
            try:
                for run in conflicts.attempts():
                    with run, report_writes(sessions) as store:
                        late, done = _write(store, plans, by_job, answers, together=together)
                break
            except _Raced:
                continue
    _observe(done)
    _answer_manager(manager, late, by_job, reports, answers, now)


def _plan(rows: dict, by_job: dict[str, list[int]], reports: list[Report], answers: list, now: datetime):
    """The plans of the jobs read (404 answered for the others), and the ids the manager must decide."""
    plans: dict[str, JobPlan] = {}
    first: list[str] = []
    for job_id, indices in by_job.items():
        row = rows.get(job_id)
        if row is None:
            for index in indices:
                answers[index] = answer(404, f"no job {job_id!r}")
            continue
        job_plan = plan(row, [reports[index] for index in indices], now)
        if job_plan is None:
            first.append(job_id)
        else:
            plans[job_id] = job_plan
    return plans, first


def _write(
    store, plans: dict[str, JobPlan], by_job: dict[str, list[int]], answers: list, *, together: bool = True
) -> tuple[list, list]:
    """Write the plans in job-id order (the store's one lock order: two batches naming the same
    jobs in any order never wait for each other in a circle); the ids of the jobs someone else
    changed since our read, and the plans written. ``together``: each run of consecutive plans
    writing the same columns (a batch of starts and ends: all of them) in one statement, raising
    ``_Raced`` when a row of it was changed since our read; else one statement per job.
    """
    late: list[str] = []
    done: list[JobPlan] = []
    ordered = [plans[job_id] for job_id in sorted(plans)]
    for run in _runs(ordered) if together else [[job_plan] for job_plan in ordered if job_plan.values]:
        writes = [(p.job_id, p.old_status, p.attempt, p.values) for p in run]
        if len(run) > 1:
            if not store.write_many(writes):
                raise _Raced
            done.extend(run)
        elif store.write_many(writes):
            done.append(run[0])
        else:
            late.append(run[0].job_id)
    written = {job_plan.job_id for job_plan in done}
    for job_plan in ordered:
        if job_plan.job_id in written or not job_plan.values:
            for index, job_answer in zip(by_job[job_plan.job_id], job_plan.answers, strict=True):
                answers[index] = job_answer
    store.record_attempts(*attempt_rows(done))
    store.count_moves(count_moves(done))
    return late, done


def _runs(ordered: list[JobPlan]) -> list[list[JobPlan]]:
    """The plans that write (in their order) cut into runs of consecutive ones writing the same columns."""
    runs: list[list[JobPlan]] = []
    shape = None
    for job_plan in ordered:
        if not job_plan.values:
            continue
        columns = tuple(sorted(job_plan.values))
        if runs and columns == shape:
            runs[-1].append(job_plan)
        else:
            runs.append([job_plan])
            shape = columns
    return runs


def _answer_manager(manager, job_ids: list[str], by_job: dict, reports: list[Report], answers: list, now) -> None:
    """The reports of ``job_ids`` through the job manager, one by one, in the order they came."""
    for index in sorted(index for job_id in job_ids for index in by_job[job_id]):
        answers[index] = _answer_one(manager, reports[index], now)


def plan(row, reports: list[Report], now: datetime) -> JobPlan | None:
    """The single write that ``reports`` make to one job, or None when the manager must decide.

    Args:
        row: the job as read (``id, status, attempt, task, created_at, started_at,
            webhook_url, has_dependants``).
        reports: the job's reports, in the order they came.
        now: when the batch arrived (a report's time is ``now`` less its age).
    """
    job_plan = JobPlan(row.id, row.status, row.attempt, row.task, row.created_at, started_at=row.started_at)
    status = row.status
    for report in reports:
        event = report.event
        if event in _MANAGER_ENDS:
            return None
        move = decide(status, row.attempt, _TARGETS[event], report.attempt)
        if move.applies:
            if event == STARTED:
                at = report.event_time(now)
                status = _PROCESSING
                job_plan.started_at = at
                job_plan.start = (report.worker, at)
                job_plan.values.update(status=status, started_at=at, worker=report.worker)
            elif event == PROGRESS:
                job_plan.values.update(progress=report.progress, progress_message=report.message)
            else:
                if row.webhook_url or row.has_dependants:
                    return None  # the manager releases the dependants and queues the webhook
                at = report.event_time(now)
                status = _COMPLETED
                at = max(at, job_plan.started_at) if job_plan.started_at is not None else at
                job_plan.end = at
                job_plan.values.update(
                    status=status, completed_at=at, result=report.result, progress=100, error=None,
                    idempotency_key=None,
                )  # fmt: skip
        elif move.refused:
            job_plan.answers.append(answer(409, move.refusal()))
            continue
        job_plan.answers.append({"status": 200})
    return job_plan


def attempt_rows(plans: list[JobPlan]) -> tuple[list[dict], list[dict]]:
    """The attempt rows that ``plans`` open (a start alone) and end (an end, with its start if any)."""
    opened, ended = [], []
    for job_plan in plans:
        worker, started_at = job_plan.start if job_plan.start is not None else (None, None)
        row = {"job_id": job_plan.job_id, "attempt": job_plan.attempt, "worker": worker, "started_at": started_at}
        if job_plan.end is not None:
            ended.append(dict(row, ended_at=job_plan.end, outcome=_COMPLETED, error=None))
        elif job_plan.start is not None:
            opened.append(dict(row, ended_at=None, outcome=None, error=None))
    return opened, ended


def count_moves(plans: list[JobPlan]) -> dict[tuple[str, str, str], int]:
    """How many jobs of each task moved from which status to which: ``{(task, old, new): n}``."""
    moves: dict[tuple[str, str, str], int] = {}
    for job_plan in plans:
        new = job_plan.values.get("status", job_plan.old_status)
        if new != job_plan.old_status:
            key = (job_plan.task, job_plan.old_status, new)
            moves[key] = moves.get(key, 0) + 1
    return moves


def _observe_wait(task: str, created_at: datetime, started_at: datetime) -> None:
    """A first attempt's time in the queue (never below zero: starts come from workers' clocks)."""
    QUEUE_WAIT_SECONDS.labels(task).observe(max((started_at - created_at).total_seconds(), 0.0))


def _observe_run(task: str, status: str, started_at: datetime, ended_at: datetime) -> None:
    JOB_RUN_SECONDS.labels(task, status).observe((ended_at - started_at).total_seconds())


def _observe(plans: list[JobPlan]) -> None:
    for job_plan in plans:
        if job_plan.start is not None and job_plan.attempt == 1:
            _observe_wait(job_plan.task, job_plan.created_at, job_plan.start[1])
        if job_plan.end is not None and job_plan.started_at is not None:
            _observe_run(job_plan.task, _COMPLETED, job_plan.started_at, job_plan.end)
        if log.isEnabledFor(logging.INFO):
            status = job_plan.values.get("status", job_plan.old_status)
            log.info(
                "job %s attempt %s %s", job_plan.job_id, job_plan.attempt, status,
                extra={"job_id": job_plan.job_id, "attempt": job_plan.attempt, "task": job_plan.task, "status": status},
            )  # fmt: skip


def apply_one(manager, report: Report, *, now: datetime | None = None) -> Job:
    """One report through the job manager, in its own transaction; the job as it is after.

    Raises:
        JobServiceError: the report is refused (404 no such job, 409 stale or backwards).
    """
    at = report.event_time(now or utcnow())
    if report.event == STARTED:
        job = manager.mark_started(report.job_id, attempt=report.attempt, worker=report.worker or "unknown", at=at)
        if job.attempt == 1 and job.started_at is not None:
            _observe_wait(job.task, job.created_at, job.started_at)
        return job
    if report.event == PROGRESS:
        return manager.update_job_progress(
            report.job_id, attempt=report.attempt, progress=report.progress, message=report.message
        )
    if report.event == COMPLETED:
        job = manager.mark_completed(report.job_id, attempt=report.attempt, result=report.result, at=at)
    elif report.event == SNOOZED:
        # No failure: a new attempt after ``seconds``, nothing spent but one of max_snoozes. A
        # NUL, which PostgreSQL's text cannot hold, would fail the whole batch.
        reason = (report.reason or "").replace("\0", "\ufffd")
        job = manager.mark_snoozed(report.job_id, attempt=report.attempt, seconds=report.seconds, reason=reason, at=at)
    elif report.unstarted:
        # The worker's own mark: the store never confirmed the start, so the task never ran. Not
        # an interruption (no run was cut): a new attempt after a short delay, nothing spent.
        job = manager.requeue_unstarted(report.job_id, attempt=report.attempt, reason=report.error, at=at)
    elif report.interrupted:
        # The worker's own mark (never an error's text, which the task controls): it died, lost
        # Redis mid-run, or Redis lost the run's outcome. Run it again at once.
        job = manager.mark_interrupted(report.job_id, attempt=report.attempt, error=report.error, at=at)
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
    except StoreError:
        raise  # the store is down or busy: the whole batch is answered 503 and sent again
    except StoreUnavailable:
        # Not every one is a driver error: the pool's TimeoutError (no free connection within
        # DB_POOL_TIMEOUT) is not, and as a per-report 500 the reporter would drop the report.
        raise
    except Exception:
        # One report that cannot be applied must not hold back the others forever.
        log.exception("job %s: the %s report could not be applied", report.job_id, report.event)
        return answer(500, "internal error; the incident was logged")
    return answer(200)
