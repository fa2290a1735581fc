"""Per-job logs: the lines a task logged while it ran, kept capped per job, read a page at a time.

Workers send ``log`` reports (``backend.core.protocol``); the lines are kept in the store up to
``MAX_LOG_LINES_PER_JOB`` lines or ``MAX_LOG_BYTES_PER_JOB`` bytes of messages per job, whichever
comes first, over all its attempts. The line that would pass a cap is replaced by one marker
line (level WARNING, ``[log cut: ...]``) and nothing more is kept for the job: a task that logs
in a loop cannot grow the store. ``GET /jobs/<job_id>/logs`` reads them by ``seq``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from backend.core.long_tasks import MAX_LOG_BYTES_PER_JOB, MAX_LOG_LINES_PER_JOB
from backend.core.protocol import Report, answer
from backend.service.representations import iso
from backend.store import job_logs
from backend.store.job_logs import Counters, Line
from backend.store.jobs import Sessions

#: The level and text of the line that says the log was cut.
MARKER_LEVEL = "WARNING"
MARKER = (
    f"[log cut: a job keeps at most {MAX_LOG_LINES_PER_JOB:,} lines or {MAX_LOG_BYTES_PER_JOB:,} bytes "
    "of log; the later lines were dropped]"
)


def keep(counters: Counters, lines: list[Line]) -> tuple[list[Line], Counters]:
    """The lines to store of ``lines`` for a job whose log holds ``counters``, and its counters after.

    Once a line does not fit, the marker takes its place and the counters go past
    ``MAX_LOG_LINES_PER_JOB``: the log is cut, and no later line is kept.
    """
    count, size = counters
    kept: list[Line] = []
    if count > MAX_LOG_LINES_PER_JOB:
        return kept, counters
    for line in lines:
        length = len(line.message.encode())
        if count >= MAX_LOG_LINES_PER_JOB or size + length > MAX_LOG_BYTES_PER_JOB:
            kept.append(Line(line.attempt, line.at, MARKER_LEVEL, MARKER))
            return kept, Counters(MAX_LOG_LINES_PER_JOB + 1, size)
        kept.append(line)
        count, size = count + 1, size + length
    return kept, Counters(count, size)


def is_cut(log_lines: int) -> bool:
    """Whether a job whose row says ``log_lines`` dropped lines (its marker is stored)."""
    return log_lines > MAX_LOG_LINES_PER_JOB


def record(sessions: Sessions, reports: list[Report]) -> list[dict]:
    """Keep the lines of ``log`` reports (any attempt, any status); one answer each (404: no job)."""
    by_job: dict[str, list[Line]] = {}
    for report in reports:
        lines = by_job.setdefault(report.job_id, [])
        lines.extend(
            # A NUL cannot be stored in PostgreSQL's text; a task's output may hold one.
            Line(report.attempt, datetime.fromtimestamp(line.at, UTC), line.level, line.message.replace("\0", "\ufffd"))
            for line in report.lines
        )
    found = job_logs.append(sessions, by_job, keep)
    return [answer(200) if report.job_id in found else answer(404, f"no job {report.job_id!r}") for report in reports]


def line_dict(row) -> dict:
    """A stored line as ``GET /jobs/<job_id>/logs`` shows it."""
    return {"seq": row.id, "attempt": row.attempt, "at": iso(row.at), "level": row.level, "message": row.message}


def page(sessions: Sessions, job_id: str, *, after: int, limit: int) -> list:
    """The job's lines after ``seq`` ``after``, oldest first, at most ``limit`` (rows; ``line_dict``)."""
    return job_logs.page(sessions, job_id, after=after, limit=limit)
