"""Internal routes: workers report started, progress, completed and failed here.

Every call needs ``X-Internal-Token``; every report names its attempt, and a report for an
older attempt is refused (409) without changing anything. Workers send their reports in
batches to ``POST /internal/reports``; the one-report routes remain for scripts and tools.

A result, error or progress message over its size cap (``backend/core/size_caps.py``) is refused
(422) and stores nothing; every batch answer carries the caps (``limits``), so that workers
shorten and check what they report by the API's caps, not only by their own settings.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from backend.api.auth import require_internal_token
from backend.api.context import services, settings
from backend.api.payloads import json_body
from backend.core import protocol
from backend.core.size_caps import SizeCaps
from backend.service import worker_reports
from backend.service.representations import job_dict

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
