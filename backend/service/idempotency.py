"""Idempotency keys: what "the same request" means when a key comes again.

While the job holding a key is live, the same request under that key returns the job; another
request is refused (422 ``idempotency_key_reused``, as Stripe answers) instead of silently
returning a job that does something else. The same request is the same task, arguments and
options, with the defaults filled in; the key itself is not part of it. The job's own row
holds all of them and they never change after it is created, so no separate hash is stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.core.errors import IdempotencyKeyReused

if TYPE_CHECKING:
    from backend.service.job_request import JobRequest
    from backend.store.models import Job


def request_fingerprint(request: JobRequest) -> dict:
    """What makes two submissions "the same request" for an idempotency key: the task, its
    arguments and every option as they were recorded (defaults filled in), never the key."""
    return {
        "task": request.task.name,
        "args": request.args,
        "kwargs": request.kwargs,
        "priority": request.priority,
        "timeout": request.timeout,
        "max_retries": request.max_retries,
        "max_interruptions": request.max_interruptions,
        "max_snoozes": request.max_snoozes,
        "webhook_url": request.webhook_url,
        "depends_on": list(request.depends_on),
        "allow_failure": request.allow_failure,
        "run_at": request.run_at,
    }


def recorded_fingerprint(job: Job) -> dict:
    """``request_fingerprint`` of the request a job was recorded from (read back from its row:
    these columns never change after the job is created, so no separate hash is stored)."""
    return {
        "task": job.task,
        "args": job.args,
        "kwargs": job.kwargs,
        "priority": job.priority,
        "timeout": job.timeout,
        "max_retries": job.max_retries,
        "max_interruptions": job.max_interruptions,
        "max_snoozes": job.max_snoozes,
        "webhook_url": job.webhook_url,
        "depends_on": list(job.depends_on or []),
        "allow_failure": bool(job.allow_failure),
        "run_at": job.run_at,
    }


def check_same_request(job: Job, request: JobRequest) -> None:
    """Refuse ``request`` under the idempotency key of ``job`` unless it is the same request.

    Raises:
        IdempotencyKeyReused: the job was recorded from another request (422, naming what differs).
    """
    recorded, asked = recorded_fingerprint(job), request_fingerprint(request)
    differing = sorted(name for name in asked if asked[name] != recorded[name])
    if differing:
        raise IdempotencyKeyReused(
            f"idempotency key {request.idempotency_key!r} belongs to job {job.id}, recorded from another "
            f"request (it differs in {', '.join(differing)}); use a new key for a new request",
            details={"job_id": job.id, "differs_in": differing},
        )
