"""Batches: many jobs of one task recorded together (``POST /tasks/<name>/batch``), and their summary.

``Batches`` is the part of ``JobManager`` for them (it records and enqueues each job through
the submissions part); a batch's jobs are ordinary jobs with a ``batch_id``, cancelled through
the cancel part like any others.
"""

from __future__ import annotations

import logging
import uuid

from backend.core.states import TERMINAL_VALUES, JobStatus
from backend.service.job_request import JobRequest
from backend.service.ownership import owned
from backend.service.representations import iso
from backend.store import conflicts
from backend.store.jobs import JobRows, Sessions
from backend.store.models import Batch, utcnow

log = logging.getLogger(__name__)


class Batches:
    """Recording batches and summing up their jobs (a part of ``JobManager``)."""

    sessions: Sessions

    def create_batch(self, requests: list[JobRequest], *, owner: str) -> tuple[Batch, list[str]]:
        """Record a batch and all its jobs in one transaction (all or none), then enqueue them.

        Unlike ``submit``, batch jobs are recorded PENDING: enqueueing a thousand takes long
        enough that jobs recorded QUEUED could look lost to the reconciler meanwhile.

        The jobs go in ordered by idempotency key and their parents are marked together in id
        order, so two batches sharing keys or parents never wait for each other in a circle;
        the transaction is run again after a deadlock all the same.
        """
        now = utcnow()
        batch = Batch(id=f"bat_{uuid.uuid4().hex}", owner=owner, task=requests[0].task.name, size=len(requests),
                      created_at=now)  # fmt: skip
        # Keyed jobs first, in key order (a key's unique-index entry is what a rival insert waits for).
        order = sorted(range(len(requests)), key=lambda i: (requests[i].idempotency_key is None,
                                                            requests[i].idempotency_key or ""))  # fmt: skip
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                rows.add_batch(batch)
                added = {
                    i: self.add_job(rows, requests[i], owner=owner, batch_id=batch.id, mark_parents=False)
                    for i in order
                }
                rows.mark_parents([parent for request in requests for parent in request.depends_on])
        job_ids = [added[i].id for i in range(len(requests))]
        log.info("batch %s recorded: %s jobs of %s", batch.id, len(job_ids), batch.task)
        self.enqueue_jobs(job_ids)
        return batch, job_ids

    def batch_summary(self, batch_id: str, *, owner: str | None) -> dict:
        """A batch's counts by status and overall progress (ended jobs count as 100%).

        Raises:
            NotFound: no such batch, or not the owner's.
        """
        with JobRows.opened(self.sessions) as rows:
            batch = owned(rows.batch(batch_id), owner, "batch", batch_id)
            rows_by_status = rows.batch_counts(batch_id)
        counts = {status.value: 0 for status in JobStatus}
        progress_sum = 0
        for status, count, progress in rows_by_status:
            counts[status] = count
            progress_sum += 100 * count if status in TERMINAL_VALUES else int(progress or 0)
        # A job missing from the batch was pruned, and only an ended job is: it counts as ended.
        pruned = max(0, batch.size - sum(counts.values()))
        ended = sum(counts[s] for s in TERMINAL_VALUES) + pruned
        progress_sum += 100 * pruned
        return {
            "batch_id": batch.id,
            "task": batch.task,
            "size": batch.size,
            "created_at": iso(batch.created_at),
            "counts": counts,
            "progress": round(progress_sum / batch.size, 1) if batch.size else 100.0,
            "done": ended == batch.size,
        }
