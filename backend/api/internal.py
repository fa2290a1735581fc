"""Internal routes: workers report started, progress, completed and failed here.

Every call needs ``X-Internal-Token``; every report names its attempt, and a report for an
older attempt is refused (409) without changing anything.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from backend.api.auth import require_internal_token
from backend.api.payloads import json_body
from backend.errors import BadRequest
from backend.metrics import JOB_RUN_SECONDS, QUEUE_WAIT_SECONDS
from backend.representations import job_dict

bp = Blueprint("internal", __name__, url_prefix="/internal")
bp.before_request(require_internal_token)


def _jobs():
    return current_app.extensions["jobs"]


def _field(body: dict, name: str, kind: type | tuple, *, required: bool = True):
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise BadRequest(f"{name} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


@bp.post("/jobs/<job_id>/started")
def started(job_id: str):
    body = json_body()
    job = _jobs().mark_started(job_id, attempt=_field(body, "attempt", int), worker=_field(body, "worker", str))
    if job.attempt == 1 and job.started_at is not None:
        QUEUE_WAIT_SECONDS.labels(job.task).observe((job.started_at - job.created_at).total_seconds())
    return jsonify(job_dict(job))


@bp.post("/jobs/<job_id>/progress")
def progress(job_id: str):
    body = json_body()
    value = _field(body, "progress", (int, float))
    if not 0 <= value <= 100:
        raise BadRequest(f"progress must be within 0-100, got {value!r}")
    job = _jobs().update_job_progress(
        job_id,
        attempt=_field(body, "attempt", int),
        progress=int(value),
        message=_field(body, "message", str, required=False),
    )
    return jsonify(job_dict(job))


@bp.post("/jobs/<job_id>/completed")
def completed(job_id: str):
    body = json_body()
    job = _jobs().mark_completed(job_id, attempt=_field(body, "attempt", int), result=body.get("result"))
    _observe_run(job)
    return jsonify(job_dict(job))


@bp.post("/jobs/<job_id>/failed")
def failed(job_id: str):
    body = json_body()
    job = _jobs().mark_failed(job_id, attempt=_field(body, "attempt", int), error=_field(body, "error", str))
    _observe_run(job)
    return jsonify(job_dict(job))


def _observe_run(job) -> None:
    if job.started_at is not None and job.completed_at is not None:
        JOB_RUN_SECONDS.labels(job.task, job.status).observe((job.completed_at - job.started_at).total_seconds())
