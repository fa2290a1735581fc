"""A new RQ job's hash, copied from one that RQ itself built for its queue (issue 17).

Why: RQ's ``Queue.create_job`` and ``Queue.enqueue_job`` were about a tenth of a submission's
Python calls: a ``Job`` object, its ``to_dict`` and an HSET of its status before the HSET of the
whole hash. For the common case, a new attempt pushed at once (no scheduled time, no parents, no
concurrency limit), every field of the hash but the job's own is the same for every job of a
queue. So RQ builds one such hash per queue (``Templates``), and each job's hash is a copy of it
with the job's own fields put in as RQ's ``Job.to_dict`` writes them. ``tests/test_rq_hashes.py``
compares the copy with the hash RQ builds for the same job, on the installed RQ.
"""

from __future__ import annotations

import threading
import zlib

from rq import Queue
from rq.job import JobStatus
from rq.utils import now, utcformat

#: The fields a job's hash has of its own; every other field is the queue's template's.
OWN_FIELDS = frozenset({"created_at", "enqueued_at", "data", "description", "meta", "timeout"})


class Templates:
    """One hash per queue, as RQ builds it for a job just pushed (``Queue.enqueue_job``)."""

    def __init__(self, *, result_ttl: int, failure_ttl: int):
        self.result_ttl, self.failure_ttl = result_ttl, failure_ttl
        self._by_queue: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _template(self, queue: Queue) -> dict:
        template = self._by_queue.get(queue.name)
        if template is None:
            with self._lock:
                template = self._by_queue.get(queue.name)
                if template is None:
                    template = self._by_queue[queue.name] = self._built_by_rq(queue)
        return template

    def _built_by_rq(self, queue: Queue) -> dict:
        # What enqueue_job leaves on a job it pushes (origin, enqueued_at, QUEUED), without Redis.
        job = queue.create_job(
            "builtins.print",
            args=[],
            kwargs={},
            timeout=1,
            result_ttl=self.result_ttl,
            failure_ttl=self.failure_ttl,
            job_id="template",
            meta={"template": True},
            description="template",
            status=JobStatus.QUEUED,
        )
        job.origin = queue.name
        job.enqueued_at = now()
        mapping = job.to_dict()
        missing = OWN_FIELDS - mapping.keys()
        if missing:  # an RQ that writes these differently: the caller uses RQ's own path
            raise LookupError(f"RQ's job hash has no {sorted(missing)}")
        return mapping

    def mapping(self, queue: Queue, func_path: str, options: dict) -> dict:
        """The hash RQ would write for ``queue.create_job(func_path, status=QUEUED, **options)``
        pushed by ``queue.enqueue_job``; ``options`` as ``QueueAdapter.enqueue`` builds them
        (args, kwargs, timeout, meta, description; the TTLs are this instance's)."""
        serializer = queue.serializer
        mapping = dict(self._template(queue))
        # RQ stamps created_at and enqueued_at a few microseconds apart; here they are one instant.
        mapping["created_at"] = mapping["enqueued_at"] = utcformat(now())
        mapping["data"] = zlib.compress(serializer.dumps((func_path, None, options["args"], options["kwargs"])))
        mapping["description"] = options["description"]
        mapping["meta"] = serializer.dumps(options["meta"])
        mapping["timeout"] = options["timeout"]
        return mapping
