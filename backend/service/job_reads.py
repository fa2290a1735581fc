"""``GET /jobs/<id>``, the path clients poll: the job's JSON, rebuilt only when the job changed.

Every request reads the job's owner and ``updated_at`` from the store (one indexed lookup on a
pooled DB-API connection, the values compared as the database returns them). When they match
what this process last served for the job, the JSON built then is sent again; otherwise the
row is read in full and serialised. Every write of a job's fields moves ``updated_at``, so a
served body is never older than the store. A job still waiting for dependencies is never
reused (its ``waiting_for`` depends on other jobs), nor a body over ``MAX_BODY`` bytes; at most
``MAX_ENTRIES`` bodies and ``MAX_BYTES`` in all are kept, the least recently served dropped first.
The waiting fields of a job that waits (``waiting_reason``...: service/waiting.py) depend on the
time and on Redis, not only on the row: its body is kept cut around them, with the few row
values they are decided from, and they are decided afresh on every request.

A job that can no longer change is served without reading the store at all, the path a client
polling a finished job takes (issue 17: a store round trip per poll cost more than the rest of
the request on PostgreSQL). That is a COMPLETED job with no webhook still owed: nothing moves a
job out of COMPLETED (no retry, no late report: core/states.py), and the only later write to its
row is the webhook's outcome. What can still happen to it is its deletion by retention, on any
host, so such a body is checked against the store again once it is ``FINAL_RECHECK`` seconds old:
a pruned job answers 404 within that time. The owner is compared on every request, so another
tenant gets the same 404 as for a missing job.

``GET /jobs`` pages are built here too, bounded in bytes as well as in jobs: the arguments and
results of the jobs are read from the store only when asked for (``?fields=``), and a page
stops at the job that would take it past ``JOBS_PAGE_MAX_BYTES``, its ``next_cursor`` going
on from there. Rows are read a few at a time, so a page never holds more in memory than about
its budget, however large the jobs behind it. The waiting fields of a page come from one
(cached) Redis snapshot, and the dependencies of its waiting jobs from one query.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from backend.broker.waiting_facts import WaitingFacts
from backend.core.cursors import decode_cursor, encode_cursor
from backend.core.errors import ValidationFailed
from backend.core.job_filters import JobFilter
from backend.core.pages import encode, page_parts
from backend.service.ownership import owned
from backend.service.representations import HEAVY_FIELDS, WAITING_NULLS, job_dict, waiting_fields
from backend.service.waiting import (
    NOT_WAITING,
    WAITING_STATUSES,
    WaitingReasons,
    WaitRow,
    may_have_snoozed,
    snoozed_attempt,
    utcnow,
)
from backend.store.job_reads import JobStamps, job_page
from backend.store.jobs import JobRows

if TYPE_CHECKING:  # types only
    from backend.service.job_manager import JobManager
    from backend.store.engine import Engine
    from backend.store.jobs import Sessions

MAX_ENTRIES = 10_000
MAX_BODY = 64 * 1024
#: Bodies kept per process, in all.
MAX_BYTES = 16 * 1024 * 1024
#: Seconds a finished job's body is served without asking the store whether the job still exists:
#: how long a pruned job may still answer 200 from a process that served it just before. A recheck
#: costs a poll's store read (on PostgreSQL ~0.25 ms of CPU with the server's): at 0.25 s, one
#: process polled for one job pays 4 a second, ~2 µs per request at 2,000 requests a second.
FINAL_RECHECK = 0.25
#: The waiting fields as a body holds them before they are decided: where a body is cut.
_WAITING_CUT = encode(WAITING_NULLS)[1:-1]


class _Entry:
    """A served body: the stamp it was built under, the body (cut around the waiting fields for a
    job that waits, with the row values they are decided from), and for a job that can no longer
    change, when the store last said it still exists."""

    __slots__ = ("stamp", "head", "tail", "row", "final", "checked")

    def __init__(self, stamp, head: bytes, tail: bytes, row: WaitRow | None, *, final: bool, checked: float):
        self.stamp, self.head, self.tail, self.row = stamp, head, tail, row
        self.final, self.checked = final, checked

    @property
    def size(self) -> int:
        return len(self.head) + len(self.tail)


def _is_final(job) -> bool:
    """Whether nothing but a deletion can change the job's body any more (see the module's docstring)."""
    return job.status == "COMPLETED" and (not job.webhook_url or job.webhook_delivered is True)


class JobReader:
    """Serves ``GET /jobs/<id>`` (from a cache of bodies checked against the store) and ``GET /jobs``."""

    def __init__(self, engine: Engine, sessions: Sessions, manager: JobManager, waiting: WaitingReasons | None = None):
        self.sessions = sessions
        self.manager = manager
        # The broker facts of the waiting fields come through the queues' Redis connection.
        self.waiting = waiting or WaitingReasons(WaitingFacts(manager.queues.connection))
        self._stamps = JobStamps(engine)
        self._bodies: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def json(self, job_id: str, *, owner: str | None) -> bytes:
        """The job's JSON body; only ``owner``'s job unless ``owner`` is None.

        Raises:
            NotFound: no such job, or it belongs to someone else.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._bodies.get(job_id)
            if cached is not None and cached.final and now - cached.checked < FINAL_RECHECK:
                self._bodies.move_to_end(job_id)
                fresh = True
            else:
                fresh = False
        if fresh:
            owned(cached.stamp, owner, "job", job_id)
            return cached.head
        stamp = self._stamps.read(job_id)
        if stamp is None and cached is not None:
            with self._lock:  # pruned: its body is never served again
                if self._bodies.get(job_id) is cached:
                    del self._bodies[job_id]
                    self._bytes -= cached.size
        owned(stamp, owner, "job", job_id)
        if cached is not None and cached.stamp == stamp:
            with self._lock:
                if job_id in self._bodies:
                    self._bodies.move_to_end(job_id)
            cached.checked = now
            return (
                cached.head
                if cached.row is None
                else self._with_waiting(cached.head, cached.tail, cached.row, waiting_for=[])
            )
        job = self.manager.get_job(job_id, owner=owner)
        waiting_for = self.manager.waiting_for(job)
        row = self._wait_row(job)
        if not row.waits:
            head, tail, row = encode(job_dict(job, waiting_for=waiting_for, waiting=NOT_WAITING)), b"", None
            body = head
        else:
            # Cut around the placeholders: the first match is theirs (only job_id, task and
            # status come before them, and a JSON string cannot hold an unescaped quote).
            head, _, tail = encode(job_dict(job, waiting_for=waiting_for, waiting=NOT_WAITING)).partition(_WAITING_CUT)
            body = self._with_waiting(head, tail, row, waiting_for=waiting_for)
        if not waiting_for and len(head) + len(tail) <= MAX_BODY:
            # Stored under the stamp read before the row: if the job changed in between, the
            # next request's stamp differs and the body is rebuilt. A final body read after the
            # stamp is newer than it, never older, and nothing but a deletion changes it any more.
            final = row is None and _is_final(job)
            entry = _Entry(stamp, head, tail, row, final=final, checked=now)
            with self._lock:
                previous = self._bodies.pop(job_id, None)
                self._bytes += entry.size - (previous.size if previous is not None else 0)
                self._bodies[job_id] = entry
                while len(self._bodies) > MAX_ENTRIES or self._bytes > MAX_BYTES:
                    _, old = self._bodies.popitem(last=False)
                    self._bytes -= old.size
        return body

    def _wait_row(self, job) -> WaitRow:
        """The row values the waiting fields are decided from; when the attempt before may have
        snoozed (rare: snoozes > 0 and a retry time ahead), that attempt is read to be sure."""
        row = WaitRow.of(job)
        if not may_have_snoozed(row, utcnow()):
            return row
        before = self.manager.get_attempts(job.id, after=job.attempt - 2, limit=1)
        snoozed, reason = snoozed_attempt(before[0] if before and before[0].attempt == job.attempt - 1 else None)
        return WaitRow.of(job, snoozed=snoozed, snooze_reason=reason)

    def _with_waiting(self, head: bytes, tail: bytes, row: WaitRow, *, waiting_for: list[str]) -> bytes:
        fields = waiting_fields(self.waiting.for_job(row, waiting_for=waiting_for))
        return head + encode(fields)[1:-1] + tail

    def list_json(
        self,
        *,
        filt: JobFilter,
        limit: int,
        cursor: str | None,
        include: frozenset[str],
        max_bytes: int,
    ) -> bytes:
        """The body of ``GET /jobs``: ``{"jobs": [...], "next_cursor": ...}``, newest first, the
        jobs matching ``filt`` (its owner: the caller's scope or an admin's filter).

        At most ``limit`` jobs, and no more than fit in ``max_bytes`` (the first job always
        does: the cursor must move on); ``include`` names the heavy fields to show. A cursor
        carries the filter's digest: it is taken back only with the same filters.

        Raises:
            ValidationFailed: a cursor this API did not give out, or given out for other filters.
        """
        omit = frozenset(HEAVY_FIELDS) - include
        digest = filt.digest()
        after = _decode_cursor(cursor, digest) if cursor else None
        # Only the columns shown: a heavy column left out is never read from the store.
        rows = job_page(self.sessions, filt=filt, after=after, limit=limit + 1, omit=omit)
        waiting = self.waiting.for_rows()
        # Waiting jobs with dependencies: (index on the page, row), settled after the page.
        dependants: list[tuple[int, object]] = []
        # Waiting jobs the rate limiter may hold: (index, row, waiting_for), asked once for the page.
        rate_limited: list[tuple[int, object, list[str] | None]] = []
        encoded = 0

        def encode_row(row) -> bytes:
            nonlocal encoded
            fields = NOT_WAITING
            if row.status in WAITING_STATUSES:
                wait_row = WaitRow.of(row)
                if wait_row.depends_on:
                    dependants.append((encoded, row))
                fields = waiting.of(wait_row, waiting_for=None)
                if not wait_row.depends_on and waiting.may_be_held(wait_row, fields):
                    rate_limited.append((encoded, row, None))
            encoded += 1
            return encode(job_dict(row, omit=omit, waiting=fields))

        with contextlib.closing(rows):
            parts, next_cursor = page_parts(
                rows, encode_row, lambda row: _encode_cursor(row, digest), limit=limit, max_bytes=max_bytes
            )
        dependants = [(i, row) for i, row in dependants if i < len(parts)]
        if dependants:
            # One query for the page (a row read is done by now: its connection is back).
            with JobRows.opened(self.sessions) as job_rows:
                ended = job_rows.ended_ids(sorted({p for _, row in dependants for p in row.depends_on}))
            for i, row in dependants:
                waiting_for = [parent for parent in row.depends_on if parent not in ended]
                fields = waiting.of(WaitRow.of(row), waiting_for=waiting_for)
                parts[i] = encode(job_dict(row, waiting_for=waiting_for, omit=omit, waiting=fields))
                if waiting.may_be_held(WaitRow.of(row), fields):
                    rate_limited.append((i, row, waiting_for))
        rate_limited = [entry for entry in rate_limited if entry[0] < len(parts)]
        held = waiting.held_until(row.rq_job_id for _, row, _ in rate_limited) if rate_limited else {}
        for i, row, waiting_for in rate_limited:
            if row.rq_job_id in held:
                fields = waiting.of(WaitRow.of(row), waiting_for=waiting_for, held=held[row.rq_job_id])
                parts[i] = encode(job_dict(row, waiting_for=waiting_for, omit=omit, waiting=fields))
        return b'{"jobs":[' + b",".join(parts) + b'],"next_cursor":' + encode(next_cursor) + b"}"


def _encode_cursor(row, digest: str) -> str:
    """The page cursor after ``row``, bound to the filters by their digest (none: a plain cursor)."""
    plain = encode_cursor(row)
    return f"{plain}-{digest}" if digest else plain


def _decode_cursor(cursor: str, digest: str) -> tuple:
    """The ``(created_at, id)`` of a cursor of ``GET /jobs`` given out for the filters of ``digest``.

    Raises:
        ValidationFailed: not a cursor of this API, or one given out for other filters.
    """
    created_at, row_id = decode_cursor(cursor)
    row_id, _, bound = row_id.partition("-")  # job ids hold no '-'
    if bound != digest:
        raise ValidationFailed("cursor was given out for other filters: send the filters of the page it came from")
    return created_at, row_id
