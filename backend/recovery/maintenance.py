"""Maintenance: end stuck jobs (``cleanup``) and empty the queues (``clear-queues``).

Both work on the store and on Redis together, so that neither is left pointing at what
the other no longer has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from backend.broker import leases, registries
from backend.broker.queues import QueueAdapter
from backend.core.errors import JobServiceError
from backend.core.states import REQUEUE_FROM
from backend.recovery.reconciler import Reconciler
from backend.service.job_manager import JobManager
from backend.store import clock, job_scans
from backend.store.jobs import Sessions

log = logging.getLogger(__name__)


@dataclass
class CleanupReport:
    #: (job_id, status, reason) of store jobs ended as FAILED.
    jobs: list[tuple[str, str, str]] = field(default_factory=list)
    #: (queue, where, rq_job_id, reason) of Redis entries removed.
    redis: list[tuple[str, str, str, str]] = field(default_factory=list)


def cleanup(
    manager: JobManager,
    reconciler: Reconciler,
    sessions: Sessions,
    queues: QueueAdapter,
    *,
    older_than: timedelta,
    force: bool,
    dry_run: bool,
) -> CleanupReport:
    """End stuck jobs: live in the store for longer than ``older_than`` and held by nothing.

    Without ``force``, a job is stuck when no live worker runs it and no queue or registry
    holds it (what the reconciler would settle). With ``force``, every live job older than
    ``older_than`` is ended. ``dry_run`` reports and changes nothing.
    """
    report = CleanupReport()
    # The database's time: it wrote the jobs' updated_at (another host's clock may differ from ours).
    cutoff = clock.now(sessions.kw["bind"]) - older_than
    old = job_scans.live_jobs_before(sessions, cutoff)
    # Look twice: a job moving from a queue to a worker in that instant is not stuck.
    verdicts = reconciler.confirmed(old, patient=False) if old else {}
    for job in old:
        verdict = verdicts.get(job.id, (None, None))[0]
        if verdict in ("requeue", "dead"):
            reason = "no queue or registry holds it" if verdict == "requeue" else "its worker is gone"
        elif force:
            reason = "forced: live for longer than the cut-off"
        else:
            continue
        report.jobs.append((job.id, job.status, reason))
        if not dry_run:
            try:
                manager.end_job(job.id, error=f"Cleanup: ended as stuck ({reason})")
            except JobServiceError as exc:
                log.info("job %s: cleanup left it (%s)", job.id, exc.message)
    _clean_registries(queues, report, dry_run=dry_run)
    return report


def _clean_registries(queues: QueueAdapter, report: CleanupReport, *, dry_run: bool) -> None:
    connection = queues.connection
    for queue in queues.queues.values():
        key, entries = registries.started_entries(connection, queue.name)
        rq_ids = [rq_id for _, rq_id in entries]
        jobs = queues.fetch_many(rq_ids) if rq_ids else {}
        alive = leases.alive(connection, {job.worker_name for job in jobs.values() if job is not None})
        for entry, rq_id in entries:
            job = jobs.get(rq_id)
            if not registries.runnable(job):
                job = None
                reason = "job hash missing or unreadable"
            elif job.worker_name not in alive:
                reason = f"worker {job.worker_name or 'unknown'} is gone"
            else:
                continue
            report.redis.append((queue.name, "started", rq_id, reason))
            if not dry_run:
                registries.fail_started(connection, key, [entry], job, f"Cleanup: {reason}")
        # Queue entries whose hash is gone or cannot be read would crash or stall workers.
        queued = registries.queue_ids(connection, queue)
        readable = queues.fetch_many(queued) if queued else {}
        for rq_id in queued:
            if not registries.runnable(readable.get(rq_id)):
                report.redis.append((queue.name, "queued", rq_id, "job hash missing or unreadable"))
                if not dry_run:
                    registries.drop_queued(connection, queue, rq_id)


def clear_queues(manager: JobManager, queues: QueueAdapter, *, flush_db: bool, by: str) -> dict:
    """Empty the three queues (or flush the whole Redis database) and cancel, in the store,
    every job that was waiting in them, so the reconciler does not put them back."""
    counts = registries.empty_queues(queues, flush_db=flush_db)
    cancelled = []
    for job_id in manager.live_job_ids(owner=None, status=None, task=None):
        job = manager.get_job(job_id)
        # Waiting in a queue (REQUEUE_FROM: not started by any worker), or anywhere once flushed.
        if job.status in REQUEUE_FROM or flush_db:
            try:
                manager.cancel_job(job_id, owner=None, by=by)
                cancelled.append(job_id)
            except JobServiceError:
                pass
    return {"emptied": counts, "flushed_db": flush_db, "cancelled_in_store": cancelled}
