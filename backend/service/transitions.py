"""The one place a job's status is written by the job commands.

``transition`` asks the state machine (``backend.core.states.decide``, which also holds the
attempt fence) whether a move applies, and writes it through the store's compare-and-set
(``JobRows.compare_and_set``), so that two writers racing on one job can never both win: the
loser reads the job again and decides again.
"""

from __future__ import annotations

from backend.broker.queues import rq_job_id
from backend.core.errors import InvalidTransition
from backend.core.states import TERMINAL, JobStatus, Verdict, decide
from backend.service import webhook_outbox
from backend.service.ownership import owned
from backend.store.jobs import JobRows
from backend.store.models import Job

#: How often a command reads a job again after losing a race for it, before giving up.
CAS_ATTEMPTS = 5


def load_job(rows: JobRows, job_id: str, *, owner: str | None = None) -> Job:
    """The job ``job_id`` in ``rows``' session; with ``owner``, only that owner's.

    Raises:
        NotFound: no such job, or it belongs to someone else.
    """
    return owned(rows.get(job_id), owner, "job", job_id)


def check_attempt(job: Job, attempt: int | None) -> None:
    """Raises StaleAttempt when ``attempt`` (None: any) is not the job's current attempt."""
    move = decide(job.status, job.attempt, job.status, attempt)
    if move.verdict is Verdict.STALE:
        raise move.error(job.id)


def transition(
    rows: JobRows,
    job: Job,
    target: JobStatus,
    *,
    attempt: int | None,
    new_attempt_from: frozenset | None = None,
    tolerate_behind: bool = False,
    strict: bool = False,
    **fields,
) -> bool:
    """Move ``job`` to ``target``: the one place a job's status is written.

    Args:
        attempt: the attempt the caller acts for; None for the API's own moves.
        new_attempt_from: start attempt ``job.attempt + 1`` instead of moving forward,
            from one of these statuses.
        tolerate_behind: a job already past ``target`` is left as it is, without error.
        strict: a job already at ``target`` is an error too (a client asking twice).

    Returns:
        True when the job changed; False for a repeated move (already at ``target``).

    Raises:
        StaleAttempt: ``attempt`` is not the job's current attempt.
        InvalidTransition: the move is backwards or out of a terminal status.
    """
    for _ in range(CAS_ATTEMPTS):
        move = decide(
            job.status, job.attempt, target, attempt,
            new_attempt_from=new_attempt_from, tolerate_behind=tolerate_behind, strict=strict,
        )  # fmt: skip
        if move.refused:
            raise move.error(job.id)
        if not move.applies:
            return False  # already at the target, or past it and the caller tolerates that
        # updated_at is the store's to write (the database's time: compare_and_set).
        values = dict(fields, status=target.value)
        if move.new_attempt:
            values["attempt"] = move.next_attempt
        if target in TERMINAL:
            # An ended job frees its idempotency key: a dead job never blocks new work.
            values["idempotency_key"] = None
        if rows.compare_and_set(job, values):
            if target in TERMINAL and job.webhook_url:
                webhook_outbox.add_delivery(rows.session, job)
            return True
        # Someone else moved the job between our read and our write: decide again.
    raise InvalidTransition(job.id, job.status, target.value, reason="too many concurrent changes")


def queue_many(rows: JobRows, job_ids: list[str], *, task: str, attempt: int) -> int:
    """Move those of ``job_ids`` (jobs of ``task`` whose ``attempt`` was just put on a queue)
    that are still PENDING on that attempt to QUEUED, in one write; return how many moved.

    What ``transition(rows, job, QUEUED, attempt=attempt, tolerate_behind=True)`` does for each:
    from anywhere else that move writes nothing (a job a fast worker already took past QUEUED,
    or one on another attempt, is left as it is), and QUEUED owes no webhook.
    """
    move = decide(JobStatus.PENDING.value, attempt, JobStatus.QUEUED.value, attempt)
    if not move.applies:  # the state machine's word, as for one job
        raise move.error(job_ids[0])
    return rows.move_many(job_ids, task=task, attempt=attempt, old=JobStatus.PENDING, new=JobStatus.QUEUED)


def new_attempt(rows: JobRows, job: Job, after: int, allowed_from: frozenset, **fields) -> bool:
    """Start attempt ``after + 1`` of ``job`` as PENDING: the only way a job goes back.

    Raises:
        StaleAttempt: the job is no longer on attempt ``after``.
        InvalidTransition: the job's status is not in ``allowed_from``.
    """
    attempt = after + 1
    return transition(
        rows, job, JobStatus.PENDING, attempt=after, new_attempt_from=allowed_from,
        rq_job_id=rq_job_id(job.id, attempt), progress=0, progress_message=None, result=None,
        started_at=None, completed_at=None, worker=None, **fields,
    )  # fmt: skip
