"""``GET /jobs/<id>``, the path clients poll: the job's JSON, rebuilt only when the job changed.

Every request reads the job's owner and ``updated_at`` from the store (one indexed lookup on a
pooled DB-API connection, the values compared as the database returns them). When they match
what this process last served for the job, the JSON built then is sent again; otherwise the
row is read in full and serialised. Every write of a job's fields moves ``updated_at``, so a
served body is never older than the store. A job still waiting for dependencies is never
reused (its ``waiting_for`` depends on other jobs), nor a body over ``MAX_BODY`` bytes; at most
``MAX_ENTRIES`` bodies and ``MAX_BYTES`` in all are kept, the least recently served dropped first.

``GET /jobs`` pages are built here too, bounded in bytes as well as in jobs: the arguments and
results of the jobs are read from the store only when asked for (``?fields=``), and a page
stops at the job that would take it past ``JOBS_PAGE_MAX_BYTES``, its ``next_cursor`` going
on from there. Rows are read a few at a time, so a page never holds more in memory than about
its budget, however large the jobs behind it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from backend.core.cursors import decode_cursor, encode_cursor
from backend.core.pages import encode, page_parts
from backend.core.states import JobStatus
from backend.service.ownership import owned
from backend.service.representations import HEAVY_FIELDS, job_dict
from backend.store.job_reads import JobStamps, job_page

if TYPE_CHECKING:  # types only
    from backend.service.job_manager import JobManager
    from backend.store.engine import Engine
    from backend.store.jobs import Sessions

MAX_ENTRIES = 10_000
MAX_BODY = 64 * 1024
#: Bodies kept per process, in all.
MAX_BYTES = 16 * 1024 * 1024


class JobReader:
    """Serves ``GET /jobs/<id>`` (from a cache of bodies checked against the store) and ``GET /jobs``."""

    def __init__(self, engine: Engine, sessions: Sessions, manager: JobManager):
        self.sessions = sessions
        self.manager = manager
        self._stamps = JobStamps(engine)
        self._bodies: OrderedDict[str, tuple[object, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def json(self, job_id: str, *, owner: str | None) -> bytes:
        """The job's JSON body; only ``owner``'s job unless ``owner`` is None.

        Raises:
            NotFound: no such job, or it belongs to someone else.
        """
        stamp = self._stamps.read(job_id)
        owned(stamp, owner, "job", job_id)
        with self._lock:
            cached = self._bodies.get(job_id)
            if cached is not None and cached[0] == stamp:
                self._bodies.move_to_end(job_id)
                return cached[1]
        job = self.manager.get_job(job_id, owner=owner)
        waiting_for = self.manager.waiting_for(job)
        body = json.dumps(job_dict(job, waiting_for=waiting_for), separators=(",", ":")).encode()
        if not waiting_for and len(body) <= MAX_BODY:
            # Stored under the stamp read before the row: if the job changed in between, the
            # next request's stamp differs and the body is rebuilt.
            with self._lock:
                previous = self._bodies.pop(job_id, None)
                self._bytes += len(body) - (len(previous[1]) if previous else 0)
                self._bodies[job_id] = (stamp, body)
                while len(self._bodies) > MAX_ENTRIES or self._bytes > MAX_BYTES:
                    _, (_, evicted) = self._bodies.popitem(last=False)
                    self._bytes -= len(evicted)
        return body

    def list_json(
        self,
        *,
        owner: str | None,
        status: JobStatus | None,
        task: str | None,
        limit: int,
        cursor: str | None,
        include: frozenset[str],
        max_bytes: int,
    ) -> bytes:
        """The body of ``GET /jobs``: ``{"jobs": [...], "next_cursor": ...}``, newest first.

        At most ``limit`` jobs, and no more than fit in ``max_bytes`` (the first job always
        does: the cursor must move on); ``include`` names the heavy fields to show.

        Raises:
            ValidationFailed: a cursor this API did not give out.
        """
        omit = frozenset(HEAVY_FIELDS) - include
        after = decode_cursor(cursor) if cursor else None
        # Only the columns shown: a heavy column left out is never read from the store.
        rows = job_page(self.sessions, owner=owner, status=status, task=task, after=after, limit=limit + 1, omit=omit)
        with contextlib.closing(rows):
            parts, next_cursor = page_parts(
                rows, lambda row: encode(job_dict(row, omit=omit)), encode_cursor, limit=limit, max_bytes=max_bytes
            )
        return b'{"jobs":[' + b",".join(parts) + b'],"next_cursor":' + encode(next_cursor) + b"}"
