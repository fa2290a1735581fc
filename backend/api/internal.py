"""Internal routes: workers report started, progress, completed and failed here.

Every call needs ``X-Internal-Token``; every report names its attempt, and a report for an
older attempt is refused (409) without changing anything. Workers send their reports in
batches to ``POST /internal/reports``; the one-report routes remain for scripts and tools.

A result, error or progress message over its size cap (``backend/core/size_caps.py``) is refused
(422) and stores nothing; every batch answer carries the caps (``limits``), so that workers
shorten and check what they report by the API's caps, not only by their own settings.
"""

from __future__ import annotations

import math

from flask import Blueprint, current_app, jsonify

from backend.api.auth import require_internal_token
from backend.api.payloads import json_body
from backend.core.errors import BadRequest, ValidationFailed
from backend.core.size_caps import SizeCaps
from backend.service import worker_reports as reports
from backend.service.representations import job_dict

bp = Blueprint("internal", __name__, url_prefix="/internal")
bp.before_request(require_internal_token)

_FIELDS = {"job_id", "attempt", "event", "at", "worker", "result", "error", "progress", "message"}


def _jobs():
    return current_app.extensions["jobs"]


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


def _caps() -> SizeCaps:
    return SizeCaps.from_settings(current_app.config)


def _report(
    body: dict, event: str, job_id: str, caps: SizeCaps, *, age: float = 0.0, where: str = ""
) -> reports.Report:
    """A checked report of ``event`` from a request body (or one item of a batch).

    Raises:
        BadRequest: a field is missing or of the wrong kind.
        ValidationFailed: a result, error or message over its size cap.
    """
    attempt = _field(body, "attempt", int, where=where)
    fields: dict = {}
    problem = None
    if event == "started":
        fields["worker"] = _field(body, "worker", str, where=where)
    elif event == "progress":
        fields["progress"] = _progress(body, where)
        fields["message"] = _field(body, "message", str, required=False, where=where)
        problem = caps.message_problem(fields["message"]) if fields["message"] is not None else None
    elif event == "completed":
        fields["result"] = body.get("result")
        problem = caps.result_problem(fields["result"])
    else:
        fields["error"] = _field(body, "error", str, where=where)
        problem = caps.error_problem(fields["error"])
    if problem:
        # Not prefixed with ``where``: the worker reports the message as the attempt's error.
        raise ValidationFailed(problem, details={"limits": caps.as_settings()})
    return reports.Report(job_id=job_id, attempt=attempt, event=event, age=age, **fields)


@bp.post("/reports")
def batch():
    """Apply a worker's batch of reports in order; one answer per report (none: a check of the token).

    Body: ``{"sent_at": <unix time>, "reports": [{"job_id", "attempt", "event", "at", ...}]}``,
    ``at`` and ``sent_at`` by the worker's clock (only their difference is used). Answer:
    ``{"results": [...], "limits": {"MAX_RESULT_BYTES": ..., ...}}``; a malformed report fails
    the whole batch (400), one over a size cap only its own answer (422).
    """
    body = json_body(lone_surrogates=True)
    items = body.get("reports")
    if not isinstance(items, list) or len(items) > reports.MAX_BATCH:
        raise BadRequest(f"reports must be a list of at most {reports.MAX_BATCH} reports")
    sent_at = _seconds(body, "sent_at")
    caps = _caps()
    batch, refused = [], {}
    for index, item in enumerate(items):
        where = f"reports[{index}]."
        if not isinstance(item, dict):
            raise BadRequest(f"reports[{index}] must be an object")
        unknown = sorted(set(item) - _FIELDS)
        if unknown:
            raise BadRequest(f"{where}{unknown[0]} is not a report field")
        event = item.get("event")
        if event not in reports.EVENTS:
            raise BadRequest(f"{where}event must be one of {', '.join(reports.EVENTS)}, got {event!r}")
        job_id = _field(item, "job_id", str, where=where)
        at = _seconds(item, "at", where)
        age = sent_at - at if sent_at is not None and at is not None else 0.0
        try:
            batch.append(_report(item, event, job_id, caps, age=age, where=where))
        except ValidationFailed as exc:
            refused[index] = {"status": 422, "error": exc.message}
    applied = iter(reports.apply(_jobs(), batch))
    results = [refused[index] if index in refused else next(applied) for index in range(len(items))]
    return jsonify({"results": results, "limits": caps.as_settings()})


def _one(job_id: str, event: str):
    job = reports.apply_one(_jobs(), _report(json_body(lone_surrogates=True), event, job_id, _caps()))
    return jsonify(job_dict(job))


@bp.post("/jobs/<job_id>/started")
def started(job_id: str):
    return _one(job_id, "started")


@bp.post("/jobs/<job_id>/progress")
def progress(job_id: str):
    return _one(job_id, "progress")


@bp.post("/jobs/<job_id>/completed")
def completed(job_id: str):
    return _one(job_id, "completed")


@bp.post("/jobs/<job_id>/failed")
def failed(job_id: str):
    return _one(job_id, "failed")
