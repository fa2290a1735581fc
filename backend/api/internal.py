"""Internal routes: workers report started, progress, completed, failed, snoozed and log lines
here, and save and read their jobs' checkpoints.

Every call needs ``X-Internal-Token``; every report names its attempt, and a report for an
older attempt is refused (409) without changing anything. Workers send their reports in
batches to ``POST /internal/reports``; the one-report routes remain for scripts and tools.

A result, error or progress message over its size cap (``backend/core/size_caps.py``) is refused
(422) and stores nothing; every batch answer carries the caps (``limits``), so that workers
shorten and check what they report by the API's caps, not only by their own settings.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from backend.api.auth import require_internal_token
from backend.api.context import services, settings
from backend.api.payloads import json_body, query_int
from backend.core import protocol
from backend.core.errors import BadRequest, NotFound, ValidationFailed
from backend.core.size_caps import SizeCaps
from backend.service import checkpoints, worker_reports
from backend.service.representations import iso, job_dict

bp = Blueprint("internal", __name__, url_prefix="/internal")
bp.before_request(require_internal_token)


def _jobs():
    return services().jobs


def _caps() -> SizeCaps:
    return SizeCaps.from_settings(settings())


@bp.post("/reports")
def batch():
    """Apply a worker's batch of reports in order; one answer per report (none: a check of the token).

    Body: ``{"sent_at": <unix time>, "reports": [{"job_id", "attempt", "event", "at", ...}]}``,
    ``at`` and ``sent_at`` by the worker's clock (only their difference is used). Answer:
    ``{"results": [...], "limits": {"MAX_RESULT_BYTES": ..., ...}}``; a malformed report fails
    the whole batch (400), one over a size cap only its own answer (422). The format and its
    checks: ``backend/core/protocol.py``.
    """
    caps = _caps()
    reports = protocol.decode_batch(json_body(lone_surrogates=True), caps)
    bundle = services()
    applied = worker_reports.apply(bundle.jobs, reports.reports, sessions=bundle.sessions)
    return jsonify(protocol.batch_answer(reports.answers(applied), caps))


def _one(job_id: str, event: str):
    report = protocol.decode_one(json_body(lone_surrogates=True), event, job_id, _caps())
    return jsonify(job_dict(worker_reports.apply_one(_jobs(), report)))


@bp.post("/jobs/<job_id>/started")
def started(job_id: str):
    return _one(job_id, protocol.STARTED)


@bp.post("/jobs/<job_id>/progress")
def progress(job_id: str):
    return _one(job_id, protocol.PROGRESS)


@bp.post("/jobs/<job_id>/completed")
def completed(job_id: str):
    return _one(job_id, protocol.COMPLETED)


@bp.post("/jobs/<job_id>/failed")
def failed(job_id: str):
    return _one(job_id, protocol.FAILED)


@bp.post("/jobs/<job_id>/snoozed")
def snoozed(job_id: str):
    return _one(job_id, protocol.SNOOZED)


@bp.post("/jobs/<job_id>/log")
def log_lines(job_id: str):
    """One ``log`` report (a forked work-horse's lines): ``{"attempt", "lines": [...]}``; 404 for no job."""
    report = protocol.decode_one(json_body(lone_surrogates=True), protocol.LOG, job_id, _caps())
    bundle = services()
    result = worker_reports.apply(bundle.jobs, [report], sessions=bundle.sessions)[0]
    if result["status"] == 404:
        raise NotFound(result["error"])
    return jsonify({"job_id": job_id})


#: The largest attempt number the checkpoint routes take (nine digits, as attempts' cursors).
MAX_ATTEMPT = 999_999_999
#: The checkpoint's rule, from the path both ends share.
CHECKPOINT_RULE = protocol.CHECKPOINT_PATH.removeprefix(bp.url_prefix).replace("{job_id}", "<job_id>")


@bp.put(CHECKPOINT_RULE)
def save_checkpoint(job_id: str):
    """Save ``{"attempt": n, "state": <json>}`` as the job's checkpoint: ``{"checkpoint_at"}``;
    409 when ``attempt`` is not the job's current one or the job ended, 413 over
    ``MAX_CHECKPOINT_BYTES``, 404 for no such job."""
    body = json_body()
    unknown = sorted(set(body) - {"attempt", "state"})
    if unknown:
        raise BadRequest(f"{unknown[0]} is not a checkpoint field; send attempt and state")
    if "state" not in body:
        raise BadRequest("state is required (any JSON value)")
    attempt = body.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPT:
        raise BadRequest(f"attempt must be an integer from 1 to {MAX_ATTEMPT}, got {str(attempt)[:40]}")
    at = checkpoints.save(services().sessions, job_id, attempt=attempt, state=body["state"])
    return jsonify({"checkpoint_at": iso(at)})


@bp.get(CHECKPOINT_RULE)
def read_checkpoint(job_id: str):
    """The job's newest checkpoint ``{"state", "attempt", "checkpoint_at"}``, all null for none;
    with ``?attempt=n``, only one that an attempt before n saved."""
    attempt = None
    if request.args.get("attempt") is not None:
        try:
            attempt = query_int("attempt", 0, 1, MAX_ATTEMPT)
        except ValidationFailed as exc:
            raise BadRequest(exc.message) from None
    return jsonify(checkpoints.read(services().sessions, job_id, attempt=attempt))
