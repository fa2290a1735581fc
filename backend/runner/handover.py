"""The work-horse's handover: the outcome a forking worker's child holds when RQ could not record it.

A work-horse runs the task; RQ's writes of the run's end follow it in the same child. When Redis
goes away between the two (a failover, a restart), the end reaches no one through RQ, and the
parent, which reads a run's end from Redis, would take the run for one cut mid-way and have it run
again. So the horse writes the outcome it holds (``HeldOutcome``) to a file the parent opened
before the fork, and the parent reports it through its own reporter (which retries for
REPORT_RETRY_SECONDS, as for any end) and records the run in RQ as RQ's worker would have.

Why a file, not the exit status or a pipe: a task can end its process with any status, and a pipe
holds 64 KiB while the parent reads only after the horse exited. The file carries the RQ job's id
and a token drawn for each run, so nothing but this run's own handover is ever read as one.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile

from backend.core import protocol

log = logging.getLogger(__name__)

#: The most a handover may hold: a result or an error within the API's caps fits with room.
MAX_BYTES = 64 * 1024 * 1024


class Handover:
    """One file per worker process, emptied before each fork, written by at most one horse."""

    def __init__(self) -> None:
        self._file = None
        self._token = ""
        self._rq_id = ""

    def arm(self, rq_id: str) -> None:
        """Before the fork: an empty file and a fresh token for this run (the horse inherits both).

        A file that cannot be made or emptied (a full or read-only temp dir) is no reason not to
        run the job: the run goes on without a handover, as before there was one."""
        self._rq_id = ""
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="jobservice-handover-")  # noqa: SIM115 - kept open
            os.ftruncate(self._file.fileno(), 0)
        except OSError as exc:
            log.warning("job %s: no handover file for its work-horse (%s); run without one", rq_id, exc)
            return
        self._token = secrets.token_hex(8)
        self._rq_id = rq_id

    def write(self, rq_id: str, report: dict) -> bool:
        """In the horse: hand ``report`` (an end, as ``protocol`` builds it) to the parent."""
        if self._file is None or rq_id != self._rq_id:
            return False
        data = json.dumps({"token": self._token, "rq_id": rq_id, "report": report}).encode()
        if len(data) > MAX_BYTES:
            return False
        os.pwrite(self._file.fileno(), data, 0)
        return True

    def take(self) -> dict | None:
        """In the parent, once the horse exited: the end it handed over for this run, or None."""
        if self._file is None or not self._rq_id:
            return None
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        rq_id, self._rq_id = self._rq_id, ""
        if not size:
            return None
        try:
            handed = json.loads(os.pread(fd, size, 0))
        except ValueError:
            log.warning("job %s: the work-horse's handover could not be read; not used", rq_id)
            return None
        if not isinstance(handed, dict) or handed.get("token") != self._token or handed.get("rq_id") != rq_id:
            return None
        report = handed.get("report")
        if not isinstance(report, dict):
            return None
        if report.get("event") not in protocol.ENDS:
            return None
        return report

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
