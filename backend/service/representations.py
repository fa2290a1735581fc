"""How jobs look over HTTP: the job object of the contract."""

from __future__ import annotations

from datetime import datetime

from backend.service.waiting import Waiting, WaitRow, decide
from backend.store.models import Attempt, Job


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with a Z, or None."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def waiting_fields(waiting: Waiting) -> dict:
    """The waiting fields of the job object, in their order."""
    return {
        "waiting_reason": waiting.reason,
        "resumes_at": iso(waiting.resumes_at),
        "queue_position": waiting.queue_position,
        "waiting_detail": waiting.detail,
    }


WAITING_NULLS = waiting_fields(Waiting())

#: Fields that may be large (up to the size caps): a list of jobs leaves them out unless asked.
HEAVY_FIELDS = ("args", "kwargs", "result")


def job_dict(
    job: Job,
    *,
    waiting_for: list[str] | None = None,
    omit: frozenset[str] = frozenset(),
    waiting: Waiting | None = None,
) -> dict:
    """The job object of the contract; ``omit`` names heavy fields to leave out (they are not
    read from ``job``, which may then be a row without them). ``waiting``: the job's waiting
    fields (backend/service/waiting.py); None: what its row alone says (no Redis read)."""
    body = _job_fields(job, waiting_for)
    if waiting is None:
        waiting = decide(WaitRow.of(job), waiting_for=waiting_for, facts=None)
    body.update(waiting_fields(waiting))
    for name in HEAVY_FIELDS:
        if name in omit:
            del body[name]
        else:
            body[name] = getattr(job, name)
    return body


def _job_fields(job: Job, waiting_for: list[str] | None) -> dict:
    # The heavy fields are placeholders here, filled in (or dropped) by job_dict.
    return {
        "job_id": job.id,
        "task": job.task,
        "status": job.status,
        # Placeholders (job_dict fills them in) kept together right after "status", so that a
        # served body can be cut around them (service/job_reads.py).
        **WAITING_NULLS,
        "priority": job.priority,
        "args": None,
        "kwargs": None,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "result": None,
        "error": job.error,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "attempt": job.attempt,
        "retry_count": job.retry_count,
        "max_retries": job.max_retries,
        "interruptions": job.interruptions,
        "max_interruptions": job.max_interruptions,
        "next_retry_at": iso(job.next_retry_at),
        "snoozes": job.snoozes,
        "max_snoozes": job.max_snoozes,
        "checkpoint_at": iso(job.checkpoint_at),
        "timeout": job.timeout,
        "webhook_url": job.webhook_url,
        "webhook_delivered": job.webhook_delivered,
        "rq_job_id": job.rq_job_id,
        "worker": job.worker,
        "cancelled_by": job.cancelled_by,
        "cancelled_at": iso(job.cancelled_at),
        "run_at": iso(job.run_at),
        "depends_on": job.depends_on or [],
        "allow_failure": job.allow_failure,
        "waiting_for": waiting_for or [],
        "schedule_id": job.schedule_id,
        "batch_id": job.batch_id,
    }


#: Every field of a job as the API shows it, in order (read off an empty job).
JOB_FIELDS: tuple[str, ...] = tuple(_job_fields(Job(), None))


def attempt_dict(attempt: Attempt) -> dict:
    return {
        "attempt": attempt.attempt,
        "worker": attempt.worker,
        "started_at": iso(attempt.started_at),
        "ended_at": iso(attempt.ended_at),
        "outcome": attempt.outcome,
        "error": attempt.error,
    }
