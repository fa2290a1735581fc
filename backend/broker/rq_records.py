"""What RQ recorded of a run: an RQ job's status, its return value, and its failure record.

Why apart from the queue adapter (``queues.py``): these read one fetched RQ job and know no
queue; the reconciler copies them into the store, the forking worker reads the last line of a
failure, and monitoring shows it.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job as RQJob


def rq_status(job: RQJob) -> str:
    """An RQ job's status as text, from what was fetched (no round trip)."""
    status = job.get_status(refresh=False)
    return getattr(status, "value", status)


def outcome(job: RQJob) -> tuple[str, Any]:
    """An RQ job's status as fetched and, when it finished, what it returned (read from Redis).

    Raises:
        BrokerError: Redis is unreachable or refused.
    """
    status = rq_status(job)
    return status, (job.return_value() if status == "finished" else None)


def failure_record(job: RQJob) -> str | None:
    """The whole of an RQ job's latest failure as RQ stored it (a traceback, or a line a worker
    or the reconciler wrote: ``backend.core.interruptions.recorded_interruption``), or None."""
    result = job.latest_result()
    if result is None:
        return None
    return (result.exc_string or "").strip() or None


def last_line(record: str | None) -> str | None:
    """The last line of a failure record (a traceback's ``"ValueError: ..."``), or None."""
    lines = (record or "").splitlines()
    return lines[-1] if lines else None


def last_error(job: RQJob) -> str | None:
    """The last line of an RQ job's latest failure (``"ValueError: ..."``), or None."""
    return last_line(failure_record(job))
