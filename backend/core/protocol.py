"""The report format between a worker and the API: both ends of one wire protocol.

A worker's reporter encodes what happened to an attempt (``started``, ``progress``,
``completed``, ``failed``) as JSON objects and POSTs them in batches to ``BATCH_PATH`` with
``TOKEN_HEADER``; the API decodes and checks each one into a ``Report`` and answers one
``{"status": ..., "error"?: ...}`` per report, with the size caps it holds (``limits``). Both
sides import this module, so a field or event name changes in one place. It imports neither
Flask nor SQLAlchemy: the worker imports it.

Times: each report carries ``at`` and the batch ``sent_at``, both by the worker's clock; the
API uses only their difference (a report's ``age``), so clock offsets between hosts cancel out.

Long tasks (issue 14) add two events: ``snoozed`` ends an attempt that asked to run again later
(``raise Snooze(seconds, reason)``: no failure), and ``log`` carries lines the task logged (for
any attempt of the job, whatever its status: lines may arrive after the end). Checkpoints are
not reports: they are synchronous calls to ``CHECKPOINT_PATH`` (the task must know it is saved).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from backend.core.errors import BadRequest, ValidationFailed
from backend.core.long_tasks import LOG_LEVELS, MAX_LOG_LINE_BYTES, MAX_LOG_LINES_PER_REPORT, MAX_SNOOZE_SECONDS
from backend.core.size_caps import SizeCaps, text_size

STARTED, PROGRESS, COMPLETED, FAILED = "started", "progress", "completed", "failed"
SNOOZED, LOG = "snoozed", "log"
EVENTS = (STARTED, PROGRESS, COMPLETED, FAILED, SNOOZED, LOG)
#: The events that end an attempt: never dropped by the worker, never coalesced.
ENDS = frozenset({COMPLETED, FAILED, SNOOZED})
#: Every field a report may hold; any other fails its batch (400).
FIELDS = frozenset(
    {
        *("job_id", "attempt", "event", "at", "worker", "result", "error", "progress", "message"),
        *("interrupted", "unstarted", "seconds", "reason", "lines"),
    }
)
#: The fields of one line of a ``log`` report.
LINE_FIELDS = frozenset({"at", "level", "message"})
#: Reports per request the API accepts.
MAX_BATCH = 1000
#: The largest attempt number a report may carry (nine digits, as the checkpoint routes and the
#: attempts' cursors): a larger one fits no store's integer column and would fail its batch's
#: transaction (a 500) instead of the report (a 400).
MAX_ATTEMPT = 999_999_999
#: How far back a report's own time may place an event (older ages are clamped).
MAX_AGE_SECONDS = 3600.0

TOKEN_HEADER = "X-Internal-Token"
BATCH_PATH = "/internal/reports"
#: ``PUT`` ``{"attempt", "state"}`` saves a checkpoint; ``GET ?attempt=n`` reads the newest one.
CHECKPOINT_PATH = "/internal/jobs/{job_id}/checkpoint"
#: How the worker records a snoozed run in RQ (its whole failure record, one line): what the
#: forking parent and the reconciler read as a snooze, never a task's traceback.
SNOOZE_RECORD_PREFIX = "Snoozed:"


def one_report_path(job_id: str, event: str) -> str:
    """The one-report route of ``event`` (for scripts and a forked work-horse's progress)."""
    return f"/internal/jobs/{job_id}/{event}"


def checkpoint_path(job_id: str) -> str:
    return CHECKPOINT_PATH.format(job_id=job_id)


def snooze_record(seconds: float, reason: str) -> str:
    """RQ's failure record of a snoozed run: one line (``recorded_snooze`` reads it back)."""
    return f"{SNOOZE_RECORD_PREFIX} {float(seconds)!r} {' '.join(reason.split())}".rstrip()


def recorded_snooze(exc_string: str | None) -> tuple[float, str] | None:
    """The (seconds, reason) of RQ's stored failure of a run (its WHOLE ``exc_string``) when it is
    the worker's own snooze line, else None: a task's failure is a traceback, never one line."""
    text = (exc_string or "").strip()
    if not text.startswith(SNOOZE_RECORD_PREFIX) or "\n" in text:
        return None
    seconds, _, reason = text[len(SNOOZE_RECORD_PREFIX) :].strip().partition(" ")
    try:
        value = float(seconds)
    except ValueError:
        return None
    return (value, reason) if 0 < value <= MAX_SNOOZE_SECONDS else None


@dataclass(frozen=True)
class LogLine:
    """One captured log line: ``at`` unix seconds (the worker's clock), a level of LOG_LEVELS."""

    at: float
    level: str
    message: str


@dataclass(frozen=True)
class Report:
    """One worker report, checked. ``age``: seconds from the event to the sending, by the worker's clock."""

    job_id: str
    attempt: int
    event: str
    age: float = 0.0
    worker: str | None = None
    result: object = None
    error: str | None = None
    progress: int | None = None
    message: str | None = None
    #: A failure of the worker's own (it died, lost Redis, Redis lost the outcome), not the
    #: task's: only the worker sets it, whatever an error's text (``backend.core.interruptions``).
    interrupted: bool = False
    #: A run the worker ended before its task began because the store never confirmed its start:
    #: no run was cut, so neither a retry nor an interruption is spent (only the worker sets it).
    unstarted: bool = False
    #: ``snoozed``: run again after this many seconds (0 < seconds <= MAX_SNOOZE_SECONDS), and why.
    seconds: float | None = None
    reason: str | None = None
    #: ``log``: the lines, oldest first.
    lines: tuple[LogLine, ...] = ()

    def event_time(self, now: datetime) -> datetime:
        """When the event happened: ``now`` less the report's age (clock offsets cancel out)."""
        return now - timedelta(seconds=min(max(self.age, 0.0), MAX_AGE_SECONDS))


def answer(status: int, error: str | None = None) -> dict:
    """The API's answer to one report: 200, or 404/409/422/500 with why."""
    return {"status": status} if error is None else {"status": status, "error": error}


# -- the worker's side: encode ------------------------------------------------------------


def started(job_id: str, attempt: int, worker: str) -> dict:
    return {"job_id": job_id, "attempt": attempt, "event": STARTED, "worker": worker}


def progress(job_id: str, attempt: int, percent: int, message: str | None) -> dict:
    return {"job_id": job_id, "attempt": attempt, "event": PROGRESS, "progress": percent, "message": message}


def completed(job_id: str, attempt: int, result: object) -> dict:
    return {"job_id": job_id, "attempt": attempt, "event": COMPLETED, "result": result}


def failed(job_id: str, attempt: int, error: str, *, interrupted: bool = False, unstarted: bool = False) -> dict:
    report = {"job_id": job_id, "attempt": attempt, "event": FAILED, "error": error}
    if interrupted:
        report["interrupted"] = True
    if unstarted:
        report["unstarted"] = True
    return report


def snoozed(job_id: str, attempt: int, seconds: float, reason: str) -> dict:
    return {"job_id": job_id, "attempt": attempt, "event": SNOOZED, "seconds": seconds, "reason": reason}


def log_lines(job_id: str, attempt: int, lines) -> dict:
    """A ``log`` report of ``lines`` (LogLine, at most MAX_LOG_LINES_PER_REPORT)."""
    encoded = [{"at": line.at, "level": line.level, "message": line.message} for line in lines]
    return {"job_id": job_id, "attempt": attempt, "event": LOG, "lines": encoded}


def batch_body(reports: list[dict], *, sent_at: float) -> dict:
    """The body of one ``POST BATCH_PATH``; each report's ``at`` is set when it was queued."""
    return {"sent_at": sent_at, "reports": reports}


# -- the API's side: decode and check ------------------------------------------------------


@dataclass(frozen=True)
class ReportBatch:
    """A decoded batch: the reports to apply, in order, and the 422 answers of the others."""

    reports: list[Report]
    #: By index in the batch: the answer of a report refused by a size cap (never applied).
    refused: dict[int, dict]
    size: int

    def answers(self, applied: list[dict]) -> list[dict]:
        """One answer per report of the batch, in its order: ``applied`` answers ``reports``."""
        rest = iter(applied)
        return [self.refused[index] if index in self.refused else next(rest) for index in range(self.size)]


def batch_answer(answers: list[dict], caps: SizeCaps) -> dict:
    """The API's answer to a batch: one answer per report, and the caps the worker must keep."""
    return {"results": answers, "limits": caps.as_settings()}


def decode_batch(body: dict, caps: SizeCaps) -> ReportBatch:
    """The checked reports of a batch body; those over a size cap answered 422 on their own.

    Raises:
        BadRequest: the body or one report in it is malformed (the whole batch is refused).
    """
    items = body.get("reports")
    if not isinstance(items, list) or len(items) > MAX_BATCH:
        raise BadRequest(f"reports must be a list of at most {MAX_BATCH} reports")
    sent_at = _seconds(body, "sent_at")
    reports, refused = [], {}
    for index, item in enumerate(items):
        where = f"reports[{index}]."
        _check_object(item, f"reports[{index}]", FIELDS, "a report field")
        event = item.get("event")
        if event not in EVENTS:
            raise BadRequest(f"{where}event must be one of {', '.join(EVENTS)}, got {event!r}")
        job_id = _field(item, "job_id", str, where=where)
        at = _seconds(item, "at", where)
        age = sent_at - at if sent_at is not None and at is not None else 0.0
        try:
            reports.append(decode_one(item, event, job_id, caps, age=age, where=where))
        except ValidationFailed as exc:
            refused[index] = answer(422, exc.message)
    return ReportBatch(reports, refused, len(items))


def decode_one(body: dict, event: str, job_id: str, caps: SizeCaps, *, age: float = 0.0, where: str = "") -> Report:
    """A checked report of ``event`` from a request body (or one item of a batch).

    Raises:
        BadRequest: a field is missing or of the wrong kind.
        ValidationFailed: a result, error or message over its size cap.
    """
    attempt = _field(body, "attempt", int, where=where)
    # 0 names no attempt (attempts count from 1): answered 409 as a stale attempt, as the
    # replay of a report for "the attempt before the first" always was.
    if not 0 <= attempt <= MAX_ATTEMPT:
        raise BadRequest(f"{where}attempt must be an integer from 0 to {MAX_ATTEMPT}, got {str(attempt)[:40]}")
    fields: dict = {}
    problem = None
    if event == STARTED:
        fields["worker"] = _field(body, "worker", str, where=where)
    elif event == PROGRESS:
        fields["progress"] = _progress(body, where)
        fields["message"] = _field(body, "message", str, required=False, where=where)
        problem = caps.message_problem(fields["message"]) if fields["message"] is not None else None
    elif event == COMPLETED:
        fields["result"] = body.get("result")
        problem = caps.result_problem(fields["result"])
    elif event == SNOOZED:
        fields["seconds"] = _snooze_seconds(body, where)
        fields["reason"] = _field(body, "reason", str, required=False, where=where) or ""
        size = len(fields["reason"])
        if size > caps.progress_message:
            problem = (
                f"the snooze reason is {size:,} characters, over MAX_PROGRESS_MESSAGE of {caps.progress_message:,}"
            )
    elif event == LOG:
        fields["lines"], problem = _lines(body, where)
    else:
        fields["error"] = _field(body, "error", str, where=where)
        fields["interrupted"] = bool(_field(body, "interrupted", bool, required=False, where=where))
        fields["unstarted"] = bool(_field(body, "unstarted", bool, required=False, where=where))
        problem = caps.error_problem(fields["error"])
    if problem:
        # Not prefixed with ``where``: the worker reports the message as the attempt's error.
        raise ValidationFailed(problem, details={"limits": caps.as_settings()})
    return Report(job_id=job_id, attempt=attempt, event=event, age=age, **fields)


def _field(body: dict, name: str, kind: type | tuple, *, required: bool = True, where: str = ""):
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise BadRequest(f"{where}{name} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{where}{name} must be a finite number, got {value!r}")
    if isinstance(value, str):
        # A lone surrogate (a file name decoded with surrogateescape) cannot be stored as UTF-8.
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _seconds(body: dict, name: str, where: str = "") -> float | None:
    """A unix time in seconds, or None when absent."""
    value = _field(body, name, (int, float), required=False, where=where)
    if value is None:
        return None
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not 0 <= seconds < 1e11:
        raise BadRequest(f"{where}{name} must be a unix time in seconds, got {value!r}")
    return seconds


def _progress(body: dict, where: str = "") -> int:
    value = _field(body, "progress", (int, float), where=where)
    if not 0 <= value <= 100:
        raise BadRequest(f"{where}progress must be within 0-100, got {value!r}")
    return int(value)


def _snooze_seconds(body: dict, where: str = "") -> float:
    value = _field(body, "seconds", (int, float), where=where)
    try:
        seconds = float(value)
    except OverflowError:  # a JSON integer past a float's range: too long, as any other
        seconds = math.inf
    if not 0 < seconds <= MAX_SNOOZE_SECONDS:
        shown = str(value) if len(str(value)) <= 40 else str(value)[:40] + "..."
        raise BadRequest(f"{where}seconds must be above 0 and at most {MAX_SNOOZE_SECONDS}, got {shown}")
    return seconds


def _check_object(item, name: str, allowed: frozenset[str], what: str) -> None:
    """Raise BadRequest unless ``item`` (called ``name``) is an object of ``allowed`` fields only."""
    if not isinstance(item, dict):
        raise BadRequest(f"{name} must be an object")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise BadRequest(f"{name}.{unknown[0]} is not {what}")


def _lines(body: dict, where: str = "") -> tuple[tuple[LogLine, ...], str | None]:
    """The checked lines of a ``log`` report, and the problem of a message over its cap (or None)."""
    items = body.get("lines")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_LOG_LINES_PER_REPORT:
        raise BadRequest(f"{where}lines must be a list of 1 to {MAX_LOG_LINES_PER_REPORT} lines")
    lines, problem = [], None
    for index, item in enumerate(items):
        at = f"{where}lines[{index}]."
        _check_object(item, f"{where}lines[{index}]", LINE_FIELDS, "a log line field")
        seconds = _seconds(item, "at", at)
        if seconds is None:
            raise BadRequest(f"{at}at must be a unix time in seconds, got None")
        level = item.get("level")
        if level not in LOG_LEVELS:
            raise BadRequest(f"{at}level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
        message = _field(item, "message", str, where=at)
        if problem is None and text_size(message) > MAX_LOG_LINE_BYTES:
            problem = f"log line {index}'s message is {text_size(message):,} bytes, over {MAX_LOG_LINE_BYTES:,} bytes"
        lines.append(LogLine(seconds, level, message))
    return tuple(lines), problem
